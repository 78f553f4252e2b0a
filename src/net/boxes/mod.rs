//! The boxes' network: an agent-owned bridge whose addresses are the front's, and per box a
//! named network namespace (as `ip netns add` makes them) joined to it by a veth pair.
//!
//! Boxes talk only to the front, which lives in the host's namespace, so IPv4 needs no NAT
//! and no forwarding: the bridge's IPv4 forwarding is off, so nothing from a box is routed
//! out even on a host where `ip_forward` is on. IPv6 is routed, so that clients reach a box's
//! own address: a /128 route through the bridge, plus a proxy NDP entry on the uplink when
//! the address lies inside the uplink's on-link prefix. Ports are isolated on the bridge, so
//! boxes cannot reach each other there, and routing between two boxes is prohibited.
//!
//! Everything added is marked as letterbox's (see `netlink`), and every `ensure_*` is
//! idempotent: it reports what it changed, nothing when all was in place.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_route::link::InfoKind;
use nix::mount::{umount2, MntFlags};
use rtnetlink::Handle;
use sha2::{Digest, Sha256};

use super::{netlink, sysctl, NetError, Origin};
pub use netns::ensure_loopback_netns;
use netns::{connect_in, ensure_netns_file, is_netns_file, netns_error, nix_error};

mod ipv6;
mod kernel;
mod netns;

/// The box's end of its veth pair, inside its namespace.
pub const BOX_LINK: &str = "eth0";
const LOOPBACK: &str = "lo";

#[derive(Debug, thiserror::Error)]
pub enum BoxNetError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("`{name}` is not a valid box name; expected a non-empty file name without `/`")]
    BadName { name: String },
    #[error("box address {address} is not a host address in the bridge's network {network}")]
    OutsideBridge { address: Ipv4Addr, network: Ipv4Net },
    #[error("the bridge's IPv6 gateway {0} is not link-local; expected an address in fe80::/64")]
    GatewayNotLinkLocal(Ipv6Addr),
    #[error("box `{0}` has an IPv6 address but the bridge has no IPv6 gateway")]
    NoIpv6Gateway(String),
    #[error("`{name}` exists and is not a bridge; expected the agent's own bridge")]
    NotABridge { name: String },
    #[error("bridge `{name}` does not exist; ensure_bridge must run first")]
    NoBridge { name: String },
    #[error("cannot {action} {}", path.display())]
    Netns {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The agent's bridge, whose addresses are the front's on the boxes' network.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub name: String,
    /// The front's address and the boxes' network, e.g. 10.89.0.1/24.
    pub ipv4: Ipv4Net,
    /// The boxes' IPv6 default gateway, link-local (e.g. fe80::1), so that no global prefix
    /// is spent on the bridge or overlaps the uplink's; None when boxes have no IPv6.
    pub ipv6_gateway: Option<Ipv6Addr>,
}

/// One box's network identity.
#[derive(Debug, Clone)]
pub struct BoxNet {
    /// The namespace file's name under the netns directory; the account's name.
    pub name: String,
    /// Inside the bridge's IPv4 network.
    pub ipv4: Ipv4Addr,
    /// Routed to the box as a /128.
    pub ipv6: Option<Ipv6Addr>,
}

/// What one `ensure_*` or `remove_*` changed, a line each; empty when nothing changed.
pub type Changes = Vec<String>;

/// The path of a box's namespace file: what its container's runtime spec joins
/// (`linux.namespaces: [{type: network, path}]`).
pub fn netns_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// The MAC address of a box's link: locally administered, and made of its IPv4 address, so
/// unique on the bridge and the same after every restart. A new one each time would leave
/// the front's neighbour entry pointing at the old box for half a minute, and every
/// connection to the box in that time unanswered.
pub fn box_mac(net: &BoxNet) -> [u8; 6] {
    mac_of(net.ipv4)
}

/// The bridge's MAC address, made of the front's IPv4 address as a box's is of its own, so
/// it differs from every box's.
fn bridge_mac(bridge: &Bridge) -> [u8; 6] {
    mac_of(bridge.ipv4.addr())
}

/// A locally administered MAC address that holds `ipv4`.
fn mac_of(ipv4: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ipv4.octets();
    [0x02, 0x6c, a, b, c, d]
}

/// The host's end of a box's veth pair: "lbv" and 12 hex digits of the name's SHA-256, as
/// account names may be longer than the 15 bytes a link name allows.
pub fn host_link_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("lbv{hex}")
}

/// Creates or repairs the bridge in the caller's network namespace: up, with the front's
/// addresses, IPv4 forwarding off on it, and IPv6 forwarding on when boxes have IPv6.
/// One at a time: boxes starting together would each find no bridge and each add it.
pub async fn ensure_bridge(bridge: &Bridge) -> Result<Changes, BoxNetError> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if let Some(gw) = bridge.ipv6_gateway {
        if !is_link_local(gw) {
            return Err(BoxNetError::GatewayNotLinkLocal(gw));
        }
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut changes = Changes::new();
    let (handle, connection) = netlink::connect()?;
    let result = ensure_bridge_on(&handle, bridge, &mut changes).await;
    connection.abort();
    result?;

    // Per link, and checked on the link a packet arrives on: a host whose `ip_forward` is on
    // (a development machine) still routes nothing from a box. Writing `ip_forward` later
    // resets it, so every ensure sets it again.
    let v4_forwarding = PathBuf::from(format!(
        "/proc/sys/net/ipv4/conf/{}/forwarding",
        bridge.name
    ));
    if sysctl::ensure_at(v4_forwarding.clone(), 0)? {
        changes.push(format!("{} = 0", v4_forwarding.display()));
    }
    if bridge.ipv6_gateway.is_some() {
        // IPv6 forwarding is one switch for the whole namespace.
        if sysctl::ensure("all", "forwarding", 1)? {
            changes.push("net.ipv6.conf.all.forwarding = 1".into());
        }
    }
    Ok(changes)
}

async fn ensure_bridge_on(
    handle: &Handle,
    bridge: &Bridge,
    changes: &mut Changes,
) -> Result<(), BoxNetError> {
    let link = match find_link(handle, &bridge.name).await? {
        Some(link) if link.kind != Some(InfoKind::Bridge) => {
            return Err(BoxNetError::NotABridge {
                name: bridge.name.clone(),
            })
        }
        Some(link) => link,
        None => {
            kernel::add_bridge(handle, &bridge.name, bridge_mac(bridge))
                .await
                .map_err(failed(&bridge.name, "add the bridge"))?;
            changes.push(format!("bridge {} added", bridge.name));
            find_link(handle, &bridge.name)
                .await?
                .ok_or_else(|| BoxNetError::NoBridge {
                    name: bridge.name.clone(),
                })?
        }
    };
    ensure_up(handle, &link, changes).await?;
    let mut wanted = vec![IpNet::V4(bridge.ipv4)];
    if let Some(gw) = bridge.ipv6_gateway {
        wanted.push(IpNet::V6(
            Ipv6Net::new(gw, 64).expect("64 is a valid prefix"),
        ));
    }
    ensure_addresses(handle, &link, &wanted, changes).await
}

/// Creates or repairs a box's namespace and its link to the bridge, and routes its IPv6
/// address to it. The bridge must exist (`ensure_bridge`). Returns the namespace file.
pub async fn ensure_box_netns(
    bridge: &Bridge,
    netns_dir: &Path,
    net: &BoxNet,
) -> Result<(PathBuf, Changes), BoxNetError> {
    check_box(bridge, net)?;
    let mut changes = Changes::new();
    let path = netns_path(netns_dir, &net.name);
    if ensure_netns_file(netns_dir, &path)? {
        changes.push(format!("network namespace {} created", path.display()));
    }
    let netns = File::open(&path).map_err(netns_error("open", &path))?;

    let (host, host_connection) = netlink::connect()?;
    let (inside, inside_connection) = connect_in(&netns, &path)?;
    let result = async {
        let bridge_link =
            find_link(&host, &bridge.name)
                .await?
                .ok_or_else(|| BoxNetError::NoBridge {
                    name: bridge.name.clone(),
                })?;
        ensure_veth(&host, &inside, &bridge_link, &netns, net, &mut changes).await?;
        configure_inside(&inside, bridge, net, &mut changes).await?;
        kernel::set_box_neighbour(&host, bridge_link.index, net.ipv4, box_mac(net))
            .await
            .map_err(failed(&bridge.name, "set the box's neighbour entry"))?;
        if let Some(address) = net.ipv6 {
            ipv6::route(&host, &bridge_link, address, &mut changes).await?;
        }
        Ok::<_, BoxNetError>(())
    }
    .await;
    host_connection.abort();
    inside_connection.abort();
    result?;
    Ok((path, changes))
}

/// Removes a box's network: its veth pair, its IPv6 route and proxy entry, and its
/// namespace file. The namespace itself ends once no process is left in it.
pub async fn remove_box_netns(netns_dir: &Path, net: &BoxNet) -> Result<Changes, BoxNetError> {
    check_name(&net.name)?;
    let mut changes = Changes::new();
    let (handle, connection) = netlink::connect()?;
    let result = async {
        let host_link = host_link_name(&net.name);
        if let Some(link) = find_link(&handle, &host_link).await? {
            kernel::del_link(&handle, link.index)
                .await
                .map_err(failed(&host_link, "remove the link"))?;
            changes.push(format!("veth {host_link} removed"));
        }
        if let Some(address) = net.ipv6 {
            ipv6::unroute(&handle, address, &mut changes).await?;
        }
        Ok::<_, BoxNetError>(())
    }
    .await;
    connection.abort();
    result?;

    let path = netns_path(netns_dir, &net.name);
    if is_netns_file(&path) {
        umount2(&path, MntFlags::MNT_DETACH).map_err(nix_error("unmount", &path))?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => changes.push(format!("network namespace {} removed", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(netns_error("remove", &path)(e)),
    }
    Ok(changes)
}

fn check_name(name: &str) -> Result<(), BoxNetError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(BoxNetError::BadName { name: name.into() });
    }
    Ok(())
}

fn check_box(bridge: &Bridge, net: &BoxNet) -> Result<(), BoxNetError> {
    check_name(&net.name)?;
    let network = bridge.ipv4.trunc();
    let host_address = network.contains(&net.ipv4)
        && net.ipv4 != network.network()
        && net.ipv4 != network.broadcast()
        && net.ipv4 != bridge.ipv4.addr();
    if !host_address {
        return Err(BoxNetError::OutsideBridge {
            address: net.ipv4,
            network,
        });
    }
    if net.ipv6.is_some() && bridge.ipv6_gateway.is_none() {
        return Err(BoxNetError::NoIpv6Gateway(net.name.clone()));
    }
    Ok(())
}

pub(super) fn is_link_local(address: Ipv6Addr) -> bool {
    address.segments()[0] & 0xffc0 == 0xfe80
}

/// The veth pair: the host's end a port of the bridge, isolated and up; the box's end
/// `eth0` inside the namespace. A pair with one end missing (a namespace made anew while
/// the old one lived on) is replaced.
async fn ensure_veth(
    host: &Handle,
    inside: &Handle,
    bridge: &netlink::Link,
    netns: &File,
    net: &BoxNet,
    changes: &mut Changes,
) -> Result<(), BoxNetError> {
    let name = host_link_name(&net.name);
    let host_end = find_link(host, &name).await?;
    let box_end = find_link(inside, BOX_LINK).await?;
    let link = match (host_end, box_end) {
        (Some(link), Some(_)) => link,
        (host_end, box_end) => {
            if let Some(link) = host_end {
                kernel::del_link(host, link.index)
                    .await
                    .map_err(failed(&name, "remove the link without a peer"))?;
            }
            if let Some(link) = box_end {
                kernel::del_link(inside, link.index)
                    .await
                    .map_err(failed(BOX_LINK, "remove the link without a peer"))?;
            }
            kernel::add_veth_into(
                host,
                &name,
                bridge.index,
                BOX_LINK,
                box_mac(net),
                netns.as_fd(),
            )
            .await
            .map_err(failed(&name, "add the veth pair"))?;
            changes.push(format!("veth {name} added, {BOX_LINK} in box {}", net.name));
            find_link(host, &name).await?.ok_or_else(|| {
                failed(&name, "find the new veth")(rtnetlink::Error::RequestFailed)
            })?
        }
    };
    if link.controller != Some(bridge.index) {
        kernel::set_controller(host, link.index, bridge.index)
            .await
            .map_err(failed(&name, "add the port to the bridge"))?;
        changes.push(format!("{name} is a port of the bridge"));
    }
    if !link.isolated {
        kernel::isolate_port(host, link.index)
            .await
            .map_err(failed(&name, "isolate the bridge port"))?;
        changes.push(format!("{name} isolated"));
    }
    ensure_up(host, &link, changes).await
}

/// Inside the box: lo and eth0 up, the box's addresses on eth0, and default routes via the
/// bridge's gateways.
async fn configure_inside(
    inside: &Handle,
    bridge: &Bridge,
    net: &BoxNet,
    changes: &mut Changes,
) -> Result<(), BoxNetError> {
    for name in [LOOPBACK, BOX_LINK] {
        let link = find_link(inside, name).await?.ok_or_else(|| {
            BoxNetError::Net(NetError::LinkNotFound {
                name: format!("{name} in box {}", net.name),
            })
        })?;
        ensure_up(inside, &link, changes).await?;
        if name == LOOPBACK {
            continue;
        }
        let ipv4 = Ipv4Net::new(net.ipv4, bridge.ipv4.prefix_len()).expect("the bridge's prefix");
        let mut wanted = vec![IpNet::V4(ipv4)];
        wanted.extend(net.ipv6.map(|a| IpNet::V6(Ipv6Net::from(a))));
        ensure_addresses(inside, &link, &wanted, changes).await?;

        let mut gateways = vec![IpAddr::V4(bridge.ipv4.addr())];
        if net.ipv6.is_some() {
            gateways.extend(bridge.ipv6_gateway.map(IpAddr::V6));
        }
        let routes = netlink::default_routes(inside).await?;
        for gateway in gateways {
            if routes
                .iter()
                .any(|r| r.index == link.index && r.gateway == gateway)
            {
                continue;
            }
            netlink::add_default_route(inside, link.index, gateway)
                .await
                .map_err(failed(BOX_LINK, "add the default route"))?;
            changes.push(format!("box {}: default via {gateway}", net.name));
        }
    }
    Ok(())
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<netlink::Link>, NetError> {
    Ok(netlink::links(handle)
        .await?
        .into_iter()
        .find(|l| l.name == name))
}

async fn ensure_up(
    handle: &Handle,
    link: &netlink::Link,
    changes: &mut Changes,
) -> Result<(), BoxNetError> {
    if !link.up {
        netlink::set_up(handle, link.index)
            .await
            .map_err(failed(&link.name, "bring the link up"))?;
        changes.push(format!("{} up", link.name));
    }
    Ok(())
}

/// Exactly `wanted` among letterbox's addresses on `link`; others' addresses stay.
async fn ensure_addresses(
    handle: &Handle,
    link: &netlink::Link,
    wanted: &[IpNet],
    changes: &mut Changes,
) -> Result<(), BoxNetError> {
    let existing: Vec<_> = netlink::addresses(handle)
        .await?
        .into_iter()
        .filter(|a| a.index == link.index)
        .collect();
    for stale in existing
        .iter()
        .filter(|a| a.origin == Origin::Letterbox && !wanted.contains(&a.net))
    {
        netlink::del_address(handle, stale)
            .await
            .map_err(failed(&link.name, "remove a stale address"))?;
        changes.push(format!("{}: {} removed", link.name, stale.net));
    }
    for &net in wanted {
        if existing.iter().any(|a| a.net == net) {
            continue;
        }
        netlink::add_address(handle, link.index, net)
            .await
            .map_err(failed(&link.name, "add an address"))?;
        changes.push(format!("{}: {net} added", link.name));
    }
    Ok(())
}

pub(super) fn failed<'a>(
    link: &'a str,
    action: &'a str,
) -> impl FnOnce(rtnetlink::Error) -> BoxNetError + 'a {
    move |source| {
        BoxNetError::Net(NetError::Netlink {
            link: link.into(),
            action: action.into(),
            source,
        })
    }
}

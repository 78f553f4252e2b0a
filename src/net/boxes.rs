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
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use rtnetlink::Handle;
use sha2::{Digest, Sha256};

use super::{netlink, sysctl, NetError, Origin};

/// The box's end of its veth pair, inside its namespace.
pub const BOX_LINK: &str = "eth0";
const LOOPBACK: &str = "lo";
/// statfs(2) magic of nsfs, the file system of /proc/*/ns/* and of their bind mounts.
const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);

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

/// The host's end of a box's veth pair: "lbv" and 12 hex digits of the name's SHA-256, as
/// account names may be longer than the 15 bytes a link name allows.
pub fn host_link_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("lbv{hex}")
}

/// Creates or repairs the bridge in the caller's network namespace: up, with the front's
/// addresses, IPv4 forwarding off on it, and IPv6 forwarding on when boxes have IPv6.
pub async fn ensure_bridge(bridge: &Bridge) -> Result<Changes, BoxNetError> {
    if let Some(gw) = bridge.ipv6_gateway {
        if !is_link_local(gw) {
            return Err(BoxNetError::GatewayNotLinkLocal(gw));
        }
    }
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
            netlink::add_bridge(handle, &bridge.name)
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
        if let Some(address) = net.ipv6 {
            route_ipv6(&host, &bridge_link, address, &mut changes).await?;
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
            netlink::del_link(&handle, link.index)
                .await
                .map_err(failed(&host_link, "remove the link"))?;
            changes.push(format!("veth {host_link} removed"));
        }
        if let Some(address) = net.ipv6 {
            unroute_ipv6(&handle, address, &mut changes).await?;
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

fn is_link_local(address: Ipv6Addr) -> bool {
    address.segments()[0] & 0xffc0 == 0xfe80
}

/// Makes `path` a named network namespace as `ip netns add` does: `dir` a shared mount (so
/// that unmounting a namespace file reaches copies in mount namespaces made later, and the
/// namespace is not kept alive by them), and a new namespace bind-mounted onto `path`.
/// Returns whether it was created.
fn ensure_netns_file(dir: &Path, path: &Path) -> Result<bool, BoxNetError> {
    std::fs::create_dir_all(dir).map_err(netns_error("create", dir))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if let Err(nix::Error::EINVAL) = mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        // Not a mount point yet: bind it onto itself first.
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(Some(dir), dir, None::<&str>, bind, None::<&str>)
            .map_err(nix_error("bind-mount", dir))?;
        mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)
            .map_err(nix_error("make shared", dir))?;
    }
    if is_netns_file(path) {
        return Ok(false);
    }
    File::create(path).map_err(netns_error("create", path))?;
    // A thread of its own: unshare moves only the calling thread into the new namespace,
    // and the thread ends right after, so no other work ever runs inside it.
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(nix_error("create a network namespace for", path))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(nix_error("bind-mount the new network namespace onto", path))
        })
        .join()
        .expect("the namespace thread does not panic")
    })?;
    Ok(true)
}

fn is_netns_file(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Opens a routing netlink socket inside the namespace open as `netns`: a socket belongs
/// to the namespace of the thread that creates it, so a short-lived thread enters it.
fn connect_in(
    netns: &File,
    path: &Path,
) -> Result<(Handle, tokio::task::JoinHandle<()>), BoxNetError> {
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle, _) = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(nix_error("enter", path))?;
            let _runtime = runtime.enter();
            rtnetlink::new_connection().map_err(|e| BoxNetError::from(NetError::Connect(e)))
        })
        .join()
        .expect("the netlink thread does not panic")
    })?;
    Ok((handle, tokio::spawn(connection)))
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
                netlink::del_link(host, link.index)
                    .await
                    .map_err(failed(&name, "remove the link without a peer"))?;
            }
            if let Some(link) = box_end {
                netlink::del_link(inside, link.index)
                    .await
                    .map_err(failed(BOX_LINK, "remove the link without a peer"))?;
            }
            netlink::add_veth_into(host, &name, bridge.index, BOX_LINK, netns.as_fd())
                .await
                .map_err(failed(&name, "add the veth pair"))?;
            changes.push(format!("veth {name} added, {BOX_LINK} in box {}", net.name));
            find_link(host, &name).await?.ok_or_else(|| {
                failed(&name, "find the new veth")(rtnetlink::Error::RequestFailed)
            })?
        }
    };
    if link.controller != Some(bridge.index) {
        netlink::set_controller(host, link.index, bridge.index)
            .await
            .map_err(failed(&name, "add the port to the bridge"))?;
        changes.push(format!("{name} is a port of the bridge"));
    }
    if !link.isolated {
        netlink::isolate_port(host, link.index)
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

/// The box's IPv6 address routed to the bridge; proxied on the uplink whose on-link prefix
/// holds it, so that the uplink's router finds it by neighbour discovery.
async fn route_ipv6(
    host: &Handle,
    bridge: &netlink::Link,
    address: Ipv6Addr,
    changes: &mut Changes,
) -> Result<(), BoxNetError> {
    let routes = netlink::ipv6_host_routes(host).await?;
    let routed = routes
        .iter()
        .any(|r| r.index == bridge.index && r.destination == IpAddr::V6(address));
    if !routed {
        netlink::add_ipv6_host_route(host, bridge.index, address)
            .await
            .map_err(failed(&bridge.name, "route the box's IPv6 address"))?;
        changes.push(format!("route {address}/128 dev {}", bridge.name));
    }

    let links = netlink::links(host).await?;
    let uplink = netlink::addresses(host)
        .await?
        .into_iter()
        .find(|a| {
            a.index != bridge.index
                && a.net.prefix_len() < 128
                && matches!(a.net, IpNet::V6(n) if n.contains(&address) && !is_link_local(n.addr()))
        })
        .and_then(|a| links.into_iter().find(|l| l.index == a.index));
    let Some(uplink) = uplink else {
        return Ok(());
    };
    if sysctl::ensure(&uplink.name, "proxy_ndp", 1)? {
        changes.push(format!("net.ipv6.conf.{}.proxy_ndp = 1", uplink.name));
    }
    let proxied = netlink::ipv6_proxy_neighbours(host)
        .await?
        .iter()
        .any(|p| p.index == uplink.index && p.address == address);
    if !proxied {
        netlink::add_ipv6_proxy_neighbour(host, uplink.index, address)
            .await
            .map_err(failed(&uplink.name, "add the proxy NDP entry"))?;
        changes.push(format!("proxy NDP {address} on {}", uplink.name));
    }
    Ok(())
}

/// Removes letterbox's route and proxy entries for a box's IPv6 address.
async fn unroute_ipv6(
    host: &Handle,
    address: Ipv6Addr,
    changes: &mut Changes,
) -> Result<(), BoxNetError> {
    for route in netlink::ipv6_host_routes(host)
        .await?
        .iter()
        .filter(|r| r.destination == IpAddr::V6(address) && r.origin == Origin::Letterbox)
    {
        netlink::del_host_route(host, route)
            .await
            .map_err(failed("the bridge", "remove the box's IPv6 route"))?;
        changes.push(format!("route {address}/128 removed"));
    }
    for entry in netlink::ipv6_proxy_neighbours(host)
        .await?
        .iter()
        .filter(|p| p.address == address && p.origin == Origin::Letterbox)
    {
        netlink::del_proxy_neighbour(host, entry)
            .await
            .map_err(failed("the uplink", "remove the proxy NDP entry"))?;
        changes.push(format!("proxy NDP {address} removed"));
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

fn failed<'a>(link: &'a str, action: &'a str) -> impl FnOnce(rtnetlink::Error) -> BoxNetError + 'a {
    move |source| {
        BoxNetError::Net(NetError::Netlink {
            link: link.into(),
            action: action.into(),
            source,
        })
    }
}

fn netns_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BoxNetError + 'a {
    move |source| BoxNetError::Netns {
        action,
        path: path.into(),
        source,
    }
}

fn nix_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::Error) -> BoxNetError + 'a {
    move |errno| netns_error(action, path)(std::io::Error::from(errno))
}

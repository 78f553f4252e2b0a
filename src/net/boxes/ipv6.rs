//! A box's IPv6 address on the host: routed to the bridge, proxied on the uplink when it
//! lies in the uplink's on-link prefix, and out of the other boxes' reach.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::Handle;

use super::{failed, is_link_local, kernel, BoxNetError, Changes};
use crate::net::{netlink, sysctl, Origin};

/// The box's IPv6 address routed to the bridge; proxied on the uplink whose on-link prefix
/// holds it, so that the uplink's router finds it by neighbour discovery.
pub(super) async fn route(
    host: &Handle,
    bridge: &netlink::Link,
    address: Ipv6Addr,
    changes: &mut Changes,
) -> Result<(), BoxNetError> {
    let routes = kernel::ipv6_host_routes(host).await?;
    let routed = routes
        .iter()
        .any(|r| r.index == bridge.index && r.destination == IpAddr::V6(address));
    if !routed {
        kernel::add_ipv6_host_route(host, bridge.index, address)
            .await
            .map_err(failed(&bridge.name, "route the box's IPv6 address"))?;
        changes.push(format!("route {address}/128 dev {}", bridge.name));
    }

    // Ports are isolated on the bridge, but the host would route one box's packets to
    // another box's IPv6 address back out of the bridge: refuse that.
    let prohibited = kernel::ipv6_prohibit_rules(host)
        .await?
        .iter()
        .any(|r| r.input == bridge.name && r.destination == address);
    if !prohibited {
        kernel::add_ipv6_prohibit_rule(host, &bridge.name, address)
            .await
            .map_err(failed(&bridge.name, "prohibit routing between boxes"))?;
        changes.push(format!("rule iif {} to {address} prohibit", bridge.name));
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
    let proxied = kernel::ipv6_proxy_neighbours(host)
        .await?
        .iter()
        .any(|p| p.index == uplink.index && p.address == address);
    if !proxied {
        kernel::add_ipv6_proxy_neighbour(host, uplink.index, address)
            .await
            .map_err(failed(&uplink.name, "add the proxy NDP entry"))?;
        changes.push(format!("proxy NDP {address} on {}", uplink.name));
    }
    Ok(())
}

/// Removes letterbox's route and proxy entries for a box's IPv6 address.
pub(super) async fn unroute(
    host: &Handle,
    address: Ipv6Addr,
    changes: &mut Changes,
) -> Result<(), BoxNetError> {
    for route in kernel::ipv6_host_routes(host)
        .await?
        .iter()
        .filter(|r| r.destination == IpAddr::V6(address) && r.origin == Origin::Letterbox)
    {
        kernel::del_host_route(host, route)
            .await
            .map_err(failed("the bridge", "remove the box's IPv6 route"))?;
        changes.push(format!("route {address}/128 removed"));
    }
    for rule in kernel::ipv6_prohibit_rules(host)
        .await?
        .iter()
        .filter(|r| r.destination == address && r.origin == Origin::Letterbox)
    {
        kernel::del_rule(host, rule)
            .await
            .map_err(failed(&rule.input, "remove the rule between boxes"))?;
        changes.push(format!("rule to {address} prohibit removed"));
    }
    for entry in kernel::ipv6_proxy_neighbours(host)
        .await?
        .iter()
        .filter(|p| p.address == address && p.origin == Origin::Letterbox)
    {
        kernel::del_proxy_neighbour(host, entry)
            .await
            .map_err(failed("the uplink", "remove the proxy NDP entry"))?;
        changes.push(format!("proxy NDP {address} removed"));
    }
    Ok(())
}

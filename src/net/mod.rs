//! The network, as `letterbox.toml` describes it: links up with their MTU, static IPv4/IPv6
//! addresses and default routes (over netlink), the IPv6 router-advertisement sysctls, and the
//! system's names on disk (hostname, hosts, resolv.conf, timezone).
//!
//! `apply` is idempotent and stateless: what letterbox adds carries its mark in the kernel
//! (protocol 213, see `netlink`), so a later apply removes exactly the marked addresses and
//! routes the file no longer lists and leaves everything else alone.

pub mod boxes;
mod files;
pub mod forward;
mod netlink;
mod report;
mod snapshot;
mod sysctl;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rtnetlink::Handle;

use crate::config::{Config, Interface};

pub use report::{Entry, Item, LinkReport, Outcome, Report};
pub use snapshot::{snapshot, LinkState, Origin};

const LOOPBACK: &str = "lo";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("cannot list {what} over netlink")]
    Dump {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface `{name}` not found; expected an existing network link (see `ip link`)")]
    LinkNotFound { name: String },
    #[error("cannot {action} on {link}")]
    Netlink {
        link: String,
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot set {}", path.display())]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the host name to `{name}`")]
    Hostname {
        name: String,
        #[source]
        source: nix::Error,
    },
}

/// Brings the caller's network namespace to what `cfg` describes and writes the system files
/// under `root` (`/` on the appliance). Per-interface failures (a missing link, a refused
/// address) are collected in the report and do not stop the other interfaces; only failing to
/// talk to netlink at all is an `Err`.
pub async fn apply(cfg: &Config, root: &Path) -> Result<Report, NetError> {
    let mut report = Report::default();
    let (handle, connection) = netlink::connect()?;
    let applied = apply_links(&handle, cfg, &mut report).await;
    connection.abort();
    applied?;
    files::apply(cfg, root, &mut report.system, &mut report.system_errors);
    Ok(report)
}

/// The interfaces `cfg` names that do not exist (yet).
pub async fn missing_links(cfg: &Config) -> Result<Vec<String>, NetError> {
    let (handle, connection) = netlink::connect()?;
    let links = netlink::links(&handle).await;
    connection.abort();
    let links = links?;
    Ok(cfg
        .interfaces
        .iter()
        .filter(|i| !links.iter().any(|l| l.name == i.name))
        .map(|i| i.name.clone())
        .collect())
}

/// Waits up to `limit` for every interface `cfg` names to exist; the names still missing.
/// A USB adapter (the Pi 3's own Ethernet is one) appears only once its bus is enumerated
/// and its driver loaded, which can be well after the agent starts.
pub async fn wait_for_links(cfg: &Config, limit: Duration) -> Result<Vec<String>, NetError> {
    const POLL: Duration = Duration::from_millis(100);
    let deadline = Instant::now() + limit;
    loop {
        let missing = missing_links(cfg).await?;
        if missing.is_empty() || Instant::now() >= deadline {
            return Ok(missing);
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn apply_links(handle: &Handle, cfg: &Config, report: &mut Report) -> Result<(), NetError> {
    let links = netlink::links(handle).await?;
    let addresses = netlink::addresses(handle).await?;
    let routes = netlink::default_routes(handle).await?;

    // Links the file no longer lists keep nothing letterbox added to them. They go first: a
    // gateway that moved to another link could not be added while its old route remains (the
    // kernel refuses a second default route of the same metric).
    let mut dropped = Vec::new();
    for link in links
        .iter()
        .filter(|l| !cfg.interfaces.iter().any(|i| i.name == l.name))
    {
        let mut link_report = LinkReport::new(&link.name);
        // As PID 1 nobody else brings loopback up, and local services need it.
        if link.name == LOOPBACK {
            bring_up(handle, link, &mut link_report).await;
        }
        let existing = Existing::of(link.index, &addresses, &routes);
        let stale = Stale {
            addresses: &[],
            gateways: &[],
            router_advertised: false,
        };
        remove_stale(handle, &link.name, &existing, stale, &mut link_report).await;
        if !link_report.entries.is_empty() || !link_report.errors.is_empty() {
            dropped.push(link_report);
        }
    }

    for iface in &cfg.interfaces {
        let mut link_report = LinkReport::new(&iface.name);
        match links.iter().find(|l| l.name == iface.name) {
            None => link_report.errors.push(NetError::LinkNotFound {
                name: iface.name.clone(),
            }),
            Some(link) => {
                let existing = Existing::of(link.index, &addresses, &routes);
                configure(handle, iface, link, &existing, &mut link_report).await;
            }
        }
        report.links.push(link_report);
    }
    report.links.append(&mut dropped);
    Ok(())
}

/// The addresses and default routes one link had before this apply.
struct Existing<'a> {
    addresses: Vec<&'a netlink::Address>,
    routes: Vec<&'a netlink::DefaultRoute>,
}

impl<'a> Existing<'a> {
    fn of(
        index: u32,
        addresses: &'a [netlink::Address],
        routes: &'a [netlink::DefaultRoute],
    ) -> Self {
        Existing {
            addresses: addresses.iter().filter(|a| a.index == index).collect(),
            routes: routes.iter().filter(|r| r.index == index).collect(),
        }
    }
}

async fn configure(
    handle: &Handle,
    iface: &Interface,
    link: &netlink::Link,
    existing: &Existing<'_>,
    out: &mut LinkReport,
) {
    let netlink_error = |action: String| {
        let link = iface.name.clone();
        move |source| NetError::Netlink {
            link,
            action,
            source,
        }
    };

    // Before the link comes up, so that a router advertisement cannot add SLAAC addresses
    // the file did not ask for.
    let ra = u8::from(iface.accept_ra);
    for name in ["accept_ra", "autoconf"] {
        match sysctl::ensure(&iface.name, name, ra) {
            Ok(changed) => out.entries.push(Entry::new(
                Item::Sysctl { name, value: ra },
                changed,
                Outcome::Changed,
            )),
            Err(e) => out.errors.push(e),
        }
    }

    if let Some(mtu) = iface.mtu {
        let changed = link.mtu != Some(mtu);
        let result = match changed {
            true => netlink::set_mtu(handle, link.index, mtu)
                .await
                .map_err(netlink_error(format!("set mtu {mtu}"))),
            false => Ok(()),
        };
        match result {
            Ok(()) => out
                .entries
                .push(Entry::new(Item::Mtu(mtu), changed, Outcome::Changed)),
            Err(e) => out.errors.push(e),
        }
    }

    bring_up(handle, link, out).await;

    let wanted_addresses: Vec<IpNet> = iface
        .ipv4
        .iter()
        .map(|&n| IpNet::V4(n))
        .chain(iface.ipv6.iter().map(|&n| IpNet::V6(n)))
        .collect();
    let wanted_gateways: Vec<IpAddr> = iface
        .gateway4
        .map(IpAddr::V4)
        .into_iter()
        .chain(iface.gateway6.map(IpAddr::V6))
        .collect();

    // Stale first: an IPv6 address that changed its prefix length must go before it can be
    // added again, and a stale route must go before the address it depends on.
    let stale = Stale {
        addresses: &wanted_addresses,
        gateways: &wanted_gateways,
        // Without router advertisements only static addresses may remain: what the kernel
        // learned from them while they were accepted would otherwise linger until it expires.
        router_advertised: !iface.accept_ra,
    };
    let mut addresses_changed = remove_stale(handle, &iface.name, existing, stale, out).await;

    let mut added = Vec::new();
    for &net in &wanted_addresses {
        // Present already and staying, added by letterbox or not: nothing to do, and not ours
        // to re-mark.
        if existing
            .addresses
            .iter()
            .any(|a| a.net == net && !stale.is_stale(a.origin, true))
        {
            out.entries.push(Entry::unchanged(Item::Address(net)));
            continue;
        }
        match netlink::add_address(handle, link.index, net)
            .await
            .map_err(netlink_error(format!("add address {net}")))
        {
            Ok(()) => {
                added.push(net);
                out.entries.push(Entry {
                    item: Item::Address(net),
                    outcome: Outcome::Added,
                })
            }
            Err(e) => out.errors.push(e),
        }
    }
    addresses_changed |= !added.is_empty();

    // Once addresses changed, the routes read before are out of date: the kernel drops a
    // link's IPv4 routes with its last IPv4 address, so a renumbered link needs its gateway
    // again.
    let read_back;
    let routes = match addresses_changed {
        false => existing.routes.clone(),
        true => match read_back_link(handle, link.index).await {
            Ok((addresses, routes)) => {
                warn_if_unmarked(&added, &addresses);
                read_back = routes;
                read_back.iter().collect()
            }
            Err(e) => {
                out.errors.push(e);
                return;
            }
        },
    };

    for &gateway in &wanted_gateways {
        // A route of letterbox's or of anyone else's (an administrator's, a static one) to
        // the gateway stays until someone removes it, so it serves; the kernel would refuse a
        // second IPv4 one of the same metric anyway. An advertised default router expires
        // with the advert, so it cannot stand in; letterbox's (IPv6 metric 512) coexists.
        if routes
            .iter()
            .any(|r| r.gateway == gateway && r.origin != Origin::RouterAdvertisement)
        {
            out.entries
                .push(Entry::unchanged(Item::DefaultRoute(gateway)));
            continue;
        }
        match netlink::add_default_route(handle, link.index, gateway)
            .await
            .map_err(netlink_error(format!("add default route via {gateway}")))
        {
            Ok(()) => out.entries.push(Entry {
                item: Item::DefaultRoute(gateway),
                outcome: Outcome::Added,
            }),
            Err(e) => out.errors.push(e),
        }
    }
}

/// The addresses and default routes of one link as the kernel has them now.
async fn read_back_link(
    handle: &Handle,
    index: u32,
) -> Result<(Vec<netlink::Address>, Vec<netlink::DefaultRoute>), NetError> {
    let mut addresses = netlink::addresses(handle).await?;
    let mut routes = netlink::default_routes(handle).await?;
    addresses.retain(|a| a.index == index);
    routes.retain(|r| r.index == index);
    Ok((addresses, routes))
}

/// Kernels before 6.1 drop an address's IFA_PROTO, so letterbox cannot tell its addresses
/// from others later and never removes one the file stops listing; said once per process.
fn warn_if_unmarked(added: &[IpNet], addresses: &[netlink::Address]) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let unmarked = addresses
        .iter()
        .any(|a| added.contains(&a.net) && a.origin != Origin::Letterbox);
    if unmarked {
        WARNED.call_once(|| {
            log::warn!(
                "this kernel does not keep the protocol mark of addresses (IFA_PROTO, Linux 6.1 \
                 and later): addresses removed from letterbox.toml will stay on their links \
                 until removed by hand"
            )
        });
    }
}

async fn bring_up(handle: &Handle, link: &netlink::Link, out: &mut LinkReport) {
    let result = match link.up {
        false => netlink::set_up(handle, link.index).await,
        true => Ok(()),
    };
    match result {
        Ok(()) => out
            .entries
            .push(Entry::new(Item::LinkUp, !link.up, Outcome::Changed)),
        Err(source) => out.errors.push(NetError::Netlink {
            link: link.name.clone(),
            action: "bring the link up".into(),
            source,
        }),
    }
}

/// What must go from a link: letterbox's addresses and routes the file does not list, and
/// optionally what router advertisements brought.
#[derive(Clone, Copy)]
struct Stale<'a> {
    /// The file's addresses and gateways for the link; letterbox's others are stale.
    addresses: &'a [IpNet],
    gateways: &'a [IpAddr],
    /// Everything router advertisements brought is stale, also what the file lists: it
    /// would expire with the advert, and letterbox adds its own in its place.
    router_advertised: bool,
}

impl Stale<'_> {
    fn is_stale(&self, origin: Origin, listed: bool) -> bool {
        match origin {
            Origin::Letterbox => !listed,
            Origin::RouterAdvertisement => self.router_advertised,
            Origin::Other => false,
        }
    }
}

/// Removes what `stale` says must go; returns whether any address went.
async fn remove_stale(
    handle: &Handle,
    link: &str,
    existing: &Existing<'_>,
    stale: Stale<'_>,
    out: &mut LinkReport,
) -> bool {
    for route in existing
        .routes
        .iter()
        .filter(|r| stale.is_stale(r.origin, stale.gateways.contains(&r.gateway)))
    {
        match netlink::del_route(handle, route).await {
            Ok(()) => out.entries.push(Entry {
                item: Item::DefaultRoute(route.gateway),
                outcome: Outcome::Removed,
            }),
            Err(source) => out.errors.push(NetError::Netlink {
                link: link.into(),
                action: format!("remove default route via {}", route.gateway),
                source,
            }),
        }
    }
    let mut removed = false;
    for address in existing
        .addresses
        .iter()
        .filter(|a| stale.is_stale(a.origin, stale.addresses.contains(&a.net)))
    {
        match netlink::del_address(handle, address).await {
            Ok(()) => {
                removed = true;
                out.entries.push(Entry {
                    item: Item::Address(address.net),
                    outcome: Outcome::Removed,
                })
            }
            Err(source) => out.errors.push(NetError::Netlink {
                link: link.into(),
                action: format!("remove address {}", address.net),
                source,
            }),
        }
    }
    removed
}

//! The links as the kernel has them, for `status`: each one's state, MTU, addresses and
//! default routes, marked with who put them there.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{netlink, Existing, NetError};

/// Who put an address or route in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Letterbox,
    /// The kernel, from a router advertisement (SLAAC address, default router).
    RouterAdvertisement,
    /// Anyone else: the kernel's own (link-local, prefix routes), an administrator, a daemon.
    Other,
}

/// One link as the kernel reports it, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub name: String,
    pub up: bool,
    pub mtu: Option<u32>,
    pub addresses: Vec<(IpNet, Origin)>,
    /// Gateways of the main table's default routes through this link.
    pub default_routes: Vec<(IpAddr, Origin)>,
}

/// Lists the caller's network namespace's links with their addresses and default routes.
pub async fn snapshot() -> Result<Vec<LinkState>, NetError> {
    let (handle, connection) = netlink::connect()?;
    let read = async {
        let links = netlink::links(&handle).await?;
        let addresses = netlink::addresses(&handle).await?;
        let routes = netlink::default_routes(&handle).await?;
        Ok::<_, NetError>((links, addresses, routes))
    }
    .await;
    connection.abort();
    let (links, addresses, routes) = read?;
    Ok(links
        .into_iter()
        .map(|l| {
            let existing = Existing::of(l.index, &addresses, &routes);
            LinkState {
                addresses: existing
                    .addresses
                    .iter()
                    .map(|a| (a.net, a.origin))
                    .collect(),
                default_routes: existing
                    .routes
                    .iter()
                    .map(|r| (r.gateway, r.origin))
                    .collect(),
                name: l.name,
                up: l.up,
                mtu: l.mtu,
            }
        })
        .collect())
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, if self.up { "up" } else { "down" })?;
        if let Some(mtu) = self.mtu {
            write!(f, ", mtu {mtu}")?;
        }
        let mark = |origin| match origin {
            Origin::Letterbox => " (letterbox)",
            Origin::RouterAdvertisement => " (router advertisement)",
            Origin::Other => "",
        };
        for (net, origin) in &self.addresses {
            write!(f, "\n  {net}{}", mark(*origin))?;
        }
        for (gateway, origin) in &self.default_routes {
            write!(f, "\n  default via {gateway}{}", mark(*origin))?;
        }
        Ok(())
    }
}

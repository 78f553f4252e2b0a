//! The boxes' network (`net::boxes`) against the kernel. A fresh network namespace stands
//! for the host (the front's namespace); a client namespace on its uplink stands for the
//! Internet (192.0.2.100, 2001:db8:1::100, its router the host at .1 / ::1). Box A's IPv6
//! address is inside the uplink's /64 (proxy NDP), box B's in 2001:db8:2::/64, a prefix
//! the client routes to the host (a routed prefix). Box namespaces live in a temporary
//! directory; the machine's own networking and /run/netns are never touched.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_ok, Netns};
use letterbox::net::boxes::{self, BoxNet, Bridge, Changes};

const UPLINK: &str = "uplink";
/// Links and addresses without the operational state, which the kernel changes on its own
/// (a bridge goes UNKNOWN and UP as its ports settle).
const LINKS: &str = "ip -br link | awk '{$2=\"\"; print}'; ip -br addr | awk '{$2=\"\"; print}'";

struct Lab {
    host: Netns,
    client: Netns,
    dir: tempfile::TempDir,
    bridge: Bridge,
    a: BoxNet,
    b: BoxNet,
}

impl Lab {
    /// The host and client namespaces, with IPv4 forwarding on in the host as on a
    /// development machine (Docker turns it on): the bridge must keep boxes in regardless.
    fn new() -> Lab {
        let lab = Lab {
            host: Netns::new("boxh"),
            client: Netns::new("boxc"),
            dir: tempfile::tempdir().expect("temporary directory"),
            bridge: Bridge {
                name: "lbbr0".into(),
                ipv4: "10.89.0.1/24".parse().unwrap(),
                ipv6_gateway: Some("fe80::1".parse().unwrap()),
            },
            a: BoxNet {
                name: "alice".into(),
                ipv4: Ipv4Addr::new(10, 89, 0, 2),
                ipv6: Some("2001:db8:1::a".parse().unwrap()),
            },
            b: BoxNet {
                name: "a-long-account-name-bob".into(),
                ipv4: Ipv4Addr::new(10, 89, 0, 3),
                ipv6: Some("2001:db8:2::b".parse().unwrap()),
            },
        };
        common::run(&[
            "ip",
            "link",
            "add",
            UPLINK,
            "netns",
            &lab.host.name,
            "type",
            "veth",
            "peer",
            "name",
            "wan",
            "netns",
            &lab.client.name,
        ]);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", UPLINK, "up"],
            &["addr", "add", "192.0.2.1/24", "dev", UPLINK],
            &["addr", "add", "2001:db8:1::1/64", "dev", UPLINK, "nodad"],
        ] {
            lab.host.ip(args);
        }
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", "wan", "up"],
            &["addr", "add", "192.0.2.100/24", "dev", "wan"],
            &["addr", "add", "2001:db8:1::100/64", "dev", "wan", "nodad"],
            // Were the host to forward the boxes' IPv4, the replies would find their way.
            &["route", "add", "10.89.0.0/24", "via", "192.0.2.1"],
            &[
                "-6",
                "route",
                "add",
                "2001:db8:2::/64",
                "via",
                "2001:db8:1::1",
            ],
        ] {
            lab.client.ip(args);
        }
        lab.host_sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
        lab
    }

    fn netns_dir(&self) -> PathBuf {
        self.dir.path().join("netns")
    }

    fn ensure_all(&self) -> Changes {
        let dir = self.netns_dir();
        self.host.block_on_inside(async {
            let mut changes = boxes::ensure_bridge(&self.bridge).await.expect("bridge");
            for net in [&self.a, &self.b] {
                let (path, more) = boxes::ensure_box_netns(&self.bridge, &dir, net)
                    .await
                    .expect("box network");
                assert_eq!(path, boxes::netns_path(&dir, &net.name));
                changes.extend(more);
            }
            changes
        })
    }

    fn remove(&self, net: &BoxNet) -> Changes {
        let dir = self.netns_dir();
        self.host
            .block_on_inside(async { boxes::remove_box_netns(&dir, net).await.expect("remove") })
    }

    fn box_path(&self, net: &BoxNet) -> PathBuf {
        boxes::netns_path(&self.netns_dir(), &net.name)
    }

    fn host_sh(&self, script: &str) -> String {
        run_ok(self.host.exec("sh").args(["-c", script]))
    }

    /// Whether `ping` from inside `ns` (a namespace file) gets an answer from `to`.
    fn ping_from_file(ns: &Path, to: &str) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["ping", "-c", "1", "-W", "2", to])
            .output()
            .expect("run ping")
            .status
            .success()
    }

    fn ping_from(&self, net: &BoxNet, to: &str) -> bool {
        Self::ping_from_file(&self.box_path(net), to)
    }

    fn ping_from_client(&self, to: &str) -> bool {
        self.client
            .exec("ping")
            .args(["-c", "1", "-W", "2", to])
            .output()
            .expect("run ping")
            .status
            .success()
    }

    /// The host's and the boxes' links, addresses, routes and proxy entries, for comparing.
    fn state(&self) -> String {
        let mut out = self.host_sh(&format!(
            "{LINKS}; ip route show table all; ip -6 route show table all; \
                 ip -6 neigh show proxy; ip -6 rule; ip -d link show master lbbr0 | grep -o 'isolated o.'; \
                 cat /proc/sys/net/ipv6/conf/all/forwarding /proc/sys/net/ipv4/conf/*/forwarding"
        ));
        for net in [&self.a, &self.b] {
            out += &run_ok(
                Command::new("nsenter")
                    .arg(format!("--net={}", self.box_path(net).display()))
                    .args([
                        "sh",
                        "-c",
                        "ip -br link; ip -br addr; ip route; ip -6 route",
                    ]),
            );
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failed test may leave namespace files mounted in the temporary directory.
        for net in [&self.a, &self.b] {
            let _ = nix::mount::umount2(&self.box_path(net), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = nix::mount::umount2(&self.netns_dir(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn root_or_skip(test: &str) -> bool {
    if !common::is_root() {
        common::skip(test, "needs root for network namespaces");
        return false;
    }
    common::installed(test, "ping") && common::installed(test, "nsenter")
}

#[test]
fn boxes_reach_the_front_and_nothing_else_over_ipv4() {
    if !root_or_skip("boxes_reach_the_front_and_nothing_else_over_ipv4") {
        return;
    }
    let lab = Lab::new();
    lab.ensure_all();

    // The bridge keeps its own MAC address as ports join: taking a new port's would flush
    // the neighbour entries below.
    assert!(
        lab.host_sh("ip link show lbbr0")
            .contains("link/ether 02:6c:0a:59:00:01"),
        "{}",
        lab.host_sh("ip link show lbbr0")
    );
    // The front knows each box's link-layer address before any packet goes to it, so the
    // first one to a new box waits for no ARP answer.
    for net in [&lab.a, &lab.b] {
        let mac = boxes::box_mac(net).map(|b| format!("{b:02x}")).join(":");
        let entry = lab.host_sh(&format!("ip neigh show {} dev lbbr0", net.ipv4));
        assert!(
            entry.contains(&format!("lladdr {mac}")),
            "{}: {entry}",
            net.name
        );
    }
    assert!(
        lab.ping_from(&lab.a, "10.89.0.1"),
        "box A reaches the front"
    );
    assert!(
        lab.ping_from(&lab.b, "10.89.0.1"),
        "box B reaches the front"
    );

    // The bridge isolates its ports: A's ARP for B never reaches B.
    assert!(!lab.ping_from(&lab.a, "10.89.0.3"), "box A reaches box B");
    assert!(
        lab.host_sh("ip -d link show master lbbr0")
            .matches("isolated on")
            .count()
            == 2
    );

    // The client answers the host, and the client routes 10.89.0.0/24 back to the host,
    // whose ip_forward is on: only the bridge's own forwarding switch stops box A.
    assert!(run_ok(
        lab.host
            .exec("ping")
            .args(["-c", "1", "-W", "2", "192.0.2.100"])
    )
    .contains("1 received"));
    assert!(
        !lab.ping_from(&lab.a, "192.0.2.100"),
        "box A reaches the outside"
    );
    assert!(
        !lab.ping_from_client("10.89.0.2"),
        "the outside reaches box A over IPv4"
    );
}

#[test]
fn ipv6_clients_reach_the_boxes_by_proxy_ndp_and_by_routed_prefix() {
    if !root_or_skip("ipv6_clients_reach_the_boxes_by_proxy_ndp_and_by_routed_prefix") {
        return;
    }
    let lab = Lab::new();
    lab.ensure_all();

    let proxies = lab.host.ip(&["-6", "neigh", "show", "proxy"]);
    assert!(proxies.contains("2001:db8:1::a dev uplink"), "{proxies}");
    assert!(
        !proxies.contains("2001:db8:2::b"),
        "B's prefix is routed: {proxies}"
    );
    assert!(
        lab.ping_from_client("2001:db8:1::a"),
        "client reaches box A (proxy NDP)"
    );
    assert!(
        lab.ping_from_client("2001:db8:2::b"),
        "client reaches box B (routed)"
    );
    assert!(
        lab.ping_from(&lab.a, "2001:db8:1::100"),
        "box A answers the client"
    );
}

#[test]
fn ensuring_again_changes_nothing_and_repairs_what_is_missing() {
    if !root_or_skip("ensuring_again_changes_nothing_and_repairs_what_is_missing") {
        return;
    }
    let lab = Lab::new();
    let first = lab.ensure_all();
    assert!(!first.is_empty());
    // Let links settle (carrier, DAD of link-local addresses) before comparing.
    assert!(lab.ping_from(&lab.a, "10.89.0.1"));
    assert!(lab.ping_from_client("2001:db8:2::b"));
    // A route may still show a port's carrier coming up ("linkdown") after the pings.
    let settled = common::wait_until(common::TIMEOUT, || !lab.state().contains("linkdown"));
    assert!(settled, "a link never came up:\n{}", lab.state());
    let before = lab.state();
    assert_eq!(
        lab.ensure_all(),
        Changes::new(),
        "a second ensure changes nothing"
    );
    assert_eq!(lab.state(), before);

    // Not vacuous: what goes missing comes back.
    let a = lab.box_path(&lab.a);
    run_ok(
        Command::new("nsenter")
            .arg(format!("--net={}", a.display()))
            .args(["ip", "addr", "del", "10.89.0.2/24", "dev", "eth0"]),
    );
    lab.host.ip(&[
        "link",
        "set",
        &boxes::host_link_name(&lab.a.name),
        "nomaster",
    ]);
    let repaired = lab.ensure_all();
    assert!(
        repaired.iter().any(|c| c.contains("10.89.0.2/24 added")),
        "{repaired:?}"
    );
    assert!(
        repaired.iter().any(|c| c.contains("default via 10.89.0.1")),
        "{repaired:?}"
    );
    assert!(
        repaired.iter().any(|c| c.contains("port of the bridge")),
        "{repaired:?}"
    );
    assert!(lab.ping_from(&lab.a, "10.89.0.1"));
}

#[test]
fn removing_a_box_leaves_nothing_behind() {
    if !root_or_skip("removing_a_box_leaves_nothing_behind") {
        return;
    }
    let lab = Lab::new();
    lab.ensure_all();
    let path = lab.box_path(&lab.a);
    let veth = boxes::host_link_name(&lab.a.name);
    assert!(lab.host.ip(&["link"]).contains(&veth));

    let removed = lab.remove(&lab.a);
    assert!(!removed.is_empty());
    assert!(!lab.host.ip(&["link"]).contains(&veth), "veth gone");
    assert!(
        !lab.host.ip(&["-6", "route"]).contains("2001:db8:1::a"),
        "route gone"
    );
    assert!(!lab
        .host
        .ip(&["-6", "neigh", "show", "proxy"])
        .contains("2001:db8:1::a"));
    assert!(!path.exists(), "namespace file gone");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(path.to_str().unwrap()),
        "namespace unmounted"
    );
    assert!(!lab.ping_from_client("2001:db8:1::a"));

    // The other box is untouched, and removing twice is a no-op.
    assert!(lab.ping_from_client("2001:db8:2::b"));
    assert_eq!(lab.remove(&lab.a), Changes::new());
}

#[test]
fn boxes_ensuring_the_bridge_at_once_both_succeed() {
    if !root_or_skip("boxes_ensuring_the_bridge_at_once_both_succeed") {
        return;
    }
    let lab = Lab::new();
    let (first, second) = lab.host.block_on_inside(async {
        tokio::join!(
            boxes::ensure_bridge(&lab.bridge),
            boxes::ensure_bridge(&lab.bridge)
        )
    });
    let (first, second) = (first.expect("first ensure"), second.expect("second ensure"));
    // One of them made it; the other found it made.
    let added = |c: &Changes| c.iter().any(|c| c.contains("bridge lbbr0 added"));
    assert!(added(&first) != added(&second), "{first:?} {second:?}");
}

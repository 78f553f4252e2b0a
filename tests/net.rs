//! `letterbox net apply` against the kernel: two network namespaces joined by a veth pair.
//! Namespace A is the appliance (letterbox configures its end), namespace B is its router
//! (192.0.2.1, 192.0.2.2, 2001:db8::1, 2001:db8::2). Every apply runs in a private UTS
//! namespace, so the host's own hostname is never touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{run, KillOnDrop, Netns, TIMEOUT};
use serde_json::Value;

/// A pair of network namespaces joined by a veth pair, and a persistent UTS namespace for
/// the applies; all removed on drop, also when the test fails.
struct Lab {
    /// The appliance's namespace.
    a: Netns,
    /// The router's namespace.
    b: Netns,
    /// The veth end in A, the one letterbox configures.
    link_a: String,
    link_b: String,
    uts: PathBuf,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let id = common::unique_id();
        let lab = Lab {
            a: Netns::new("net-a"),
            b: Netns::new("net-b"),
            link_a: format!("lb{id}a"),
            link_b: format!("lb{id}b"),
            uts: PathBuf::from(format!("/run/lbnet-{id}-uts")),
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        run(&[
            "ip",
            "link",
            "add",
            &lab.link_a,
            "netns",
            &lab.a.name,
            "type",
            "veth",
            "peer",
            "name",
            &lab.link_b,
            "netns",
            &lab.b.name,
        ]);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", &lab.link_b, "up"],
            vec!["addr", "add", "192.0.2.1/24", "dev", &lab.link_b],
            vec!["addr", "add", "192.0.2.2/24", "dev", &lab.link_b],
            // Without DAD on the router's side too: no ping may depend on DAD timing.
            vec!["addr", "add", "2001:db8::1/64", "dev", &lab.link_b, "nodad"],
            vec!["addr", "add", "2001:db8::2/64", "dev", &lab.link_b, "nodad"],
        ] {
            lab.b.ip(&args);
        }
        std::fs::write(&lab.uts, "").expect("UTS namespace mount point");
        let uts = format!("--uts={}", lab.uts.display());
        run(&["unshare", &uts, "hostname", "lab"]);
        lab
    }

    /// A second veth pair inside namespace A, both ends up; returns the end letterbox may
    /// configure. Removed with the namespace.
    fn add_second_link(&self) -> String {
        let link = format!("{}c", self.link_a.trim_end_matches('a'));
        let peer = format!("{}d", self.link_a.trim_end_matches('a'));
        self.a
            .ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        self.a.ip(&["link", "set", &peer, "up"]);
        link
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Runs `letterbox net apply` with `toml` inside namespace A (and the lab's UTS namespace).
    fn apply(&self, toml: &str) -> Output {
        let file = self.dir.path().join("letterbox.toml");
        std::fs::write(&file, toml).expect("write the provisioning file");
        let uts = format!("--uts={}", self.uts.display());
        let bin = common::letterbox_bin();
        let root = self.root();
        let output = self
            .a
            .exec("nsenter")
            .arg(&uts)
            .arg(&bin)
            .args(["net", "apply"])
            .arg(&file)
            .arg("--root")
            .arg(&root)
            .output()
            .expect("run letterbox net apply");
        eprintln!(
            "letterbox net apply: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn apply_ok(&self, toml: &str) -> String {
        let output = self.apply(toml);
        assert!(output.status.success(), "apply failed: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    /// `ip -j ARGS` inside namespace NS, parsed.
    fn ip_json(&self, ns: &Netns, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend(args);
        serde_json::from_str(&ns.ip(&full)).expect("ip -j prints JSON")
    }

    /// The link's addresses in namespace A, as "address/prefix".
    fn addresses_a(&self) -> Vec<String> {
        self.addresses_of(&self.link_a)
    }

    /// The addresses of a link in namespace A, as "address/prefix".
    fn addresses_of(&self, link: &str) -> Vec<String> {
        let links = self.ip_json(&self.a, &["addr", "show", "dev", link]);
        links[0]["addr_info"]
            .as_array()
            .expect("addr_info")
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    /// Gateways of the default routes in namespace A, IPv4 and IPv6, with their protocol.
    fn default_routes_a(&self) -> Vec<(String, String)> {
        self.default_routes_of(&[])
    }

    /// Like `default_routes_a`, of the routes through one link.
    fn default_routes_via(&self, link: &str) -> Vec<(String, String)> {
        self.default_routes_of(&["dev", link])
    }

    fn default_routes_of(&self, filter: &[&str]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for family in ["-4", "-6"] {
            let mut args = vec![family, "route", "show", "default"];
            args.extend(filter);
            let routes = self.ip_json(&self.a, &args);
            for r in routes.as_array().expect("route list") {
                out.push((
                    r["gateway"].as_str().unwrap_or("").to_string(),
                    r["protocol"].to_string().trim_matches('"').to_string(),
                ));
            }
        }
        out
    }

    /// Everything `ip` reports about namespace A: links, addresses, routes of both families.
    /// Without `operstate` and `tentative`: the kernel moves those on its own for a while after
    /// a link comes up (link watch, DAD of its link-local address); no apply sets them.
    fn kernel_state_a(&self) -> Vec<Value> {
        // What the kernel changes on its own once a link is up: the carrier comes, DAD
        // ends, and a link-local address is generated (the link's own, never letterbox's).
        fn strip_kernel_driven(value: &mut Value) {
            match value {
                Value::Object(map) => {
                    map.remove("operstate");
                    map.remove("tentative");
                    if let Some(Value::Array(flags)) = map.get_mut("flags") {
                        flags.retain(|f| f != "NO-CARRIER");
                    }
                    if let Some(Value::Array(addresses)) = map.get_mut("addr_info") {
                        addresses.retain(|a| a["scope"] != "link");
                    }
                    map.values_mut().for_each(strip_kernel_driven);
                }
                Value::Array(items) => items.iter_mut().for_each(strip_kernel_driven),
                _ => {}
            }
        }
        [
            vec!["link", "show"],
            vec!["addr", "show"],
            vec!["-4", "route", "show", "table", "all"],
            vec!["-6", "route", "show", "table", "all"],
        ]
        .iter()
        .map(|args| {
            let mut state = self.ip_json(&self.a, args);
            strip_kernel_driven(&mut state);
            state
        })
        .collect()
    }

    fn ping_from_b(&self, address: &str) -> bool {
        self.b
            .exec("ping")
            .args(["-c1", "-W2", address])
            .status()
            .expect("run ping")
            .success()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The namespaces (and the veth pair with them) go when their fields drop.
        let _ = nix::mount::umount(&self.uts);
        let _ = std::fs::remove_file(&self.uts);
    }
}

fn provisioning(interfaces: &str) -> String {
    format!(
        r#"version = 1
nameservers = ["192.0.2.53", "2001:db8::53"]

[system]
hostname = "mail"
domain = "example.org"
timezone = "Europe/Paris"

{interfaces}"#
    )
}

fn interface(name: &str, body: &str) -> String {
    format!("[[interface]]\nname = \"{name}\"\n{body}\n")
}

const STATIC: &str = r#"ipv4 = ["192.0.2.10/24"]
gateway4 = "192.0.2.1"
ipv6 = ["2001:db8::10/64"]
gateway6 = "2001:db8::1"
mtu = 1400"#;

fn runnable(test: &str) -> bool {
    if !common::is_root() {
        common::skip(test, "needs root for network namespaces");
        return false;
    }
    true
}

#[test]
fn applied_config_is_in_the_kernel_and_reachable_over_ipv4_and_ipv6() {
    if !runnable("applied_config_is_in_the_kernel_and_reachable_over_ipv4_and_ipv6") {
        return;
    }
    let lab = Lab::new();
    let report = lab.apply_ok(&provisioning(&interface(&lab.link_a, STATIC)));
    assert!(report.contains("+ address 192.0.2.10/24"), "{report}");

    let link = &lab.ip_json(&lab.a, &["link", "show", "dev", &lab.link_a])[0];
    assert_eq!(link["mtu"], 1400);
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "link is not up: {link}"
    );
    let mut addresses = lab.addresses_a();
    addresses.retain(|a| !a.starts_with("fe80:"));
    assert_eq!(addresses, ["192.0.2.10/24", "2001:db8::10/64"]);
    assert_eq!(
        lab.default_routes_a(),
        [
            ("192.0.2.1".to_string(), "213".to_string()),
            ("2001:db8::1".to_string(), "213".to_string())
        ]
    );

    let show = common::run_ok(lab.a.exec(common::letterbox_bin()).args(["net", "show"]));
    for line in [
        "  192.0.2.10/24 (letterbox)",
        "  2001:db8::10/64 (letterbox)",
        "  default via 192.0.2.1 (letterbox)",
        "  default via 2001:db8::1 (letterbox)",
    ] {
        assert!(
            show.lines().any(|l| l == line),
            "`net show` lacks {line:?}:\n{show}"
        );
    }

    assert!(lab.ping_from_b("192.0.2.10"), "no IPv4 ping reply");
    assert!(lab.ping_from_b("2001:db8::10"), "no IPv6 ping reply");
}

#[test]
fn applying_twice_changes_nothing() {
    if !runnable("applying_twice_changes_nothing") {
        return;
    }
    let lab = Lab::new();
    let toml = provisioning(&interface(&lab.link_a, STATIC));
    let first = lab.apply_ok(&toml);
    assert!(first.trim_end().ends_with("changes applied"), "{first}");
    let before = lab.kernel_state_a();

    let second = lab.apply_ok(&toml);
    assert_eq!(
        lab.kernel_state_a(),
        before,
        "the second apply changed the kernel"
    );
    assert!(second.trim_end().ends_with("no changes"), "{second}");
    for line in second.lines() {
        let line = line.trim_start();
        assert!(
            !(line.starts_with('+') || line.starts_with('-') || line.starts_with('~')),
            "second apply reports a change: {line}"
        );
    }
}

#[test]
fn edited_file_removes_stale_state_and_leaves_foreign_state_alone() {
    if !runnable("edited_file_removes_stale_state_and_leaves_foreign_state_alone") {
        return;
    }
    let lab = Lab::new();
    lab.apply_ok(&provisioning(&interface(
        &lab.link_a,
        r#"ipv4 = ["192.0.2.10/24", "192.0.2.11/24"]
gateway4 = "192.0.2.1"
ipv6 = ["2001:db8::10/64", "2001:db8::11/64"]
gateway6 = "2001:db8::1""#,
    )));
    // Not letterbox's: added by hand, and must survive.
    for args in [
        vec!["addr", "add", "198.51.100.7/24", "dev", &lab.link_a],
        vec![
            "addr",
            "add",
            "2001:db8:1::7/64",
            "dev",
            &lab.link_a,
            "nodad",
        ],
        vec!["route", "add", "203.0.113.0/24", "via", "192.0.2.1"],
    ] {
        lab.a.ip(&args);
    }

    let report = lab.apply_ok(&provisioning(&interface(
        &lab.link_a,
        r#"ipv4 = ["192.0.2.10/24"]
gateway4 = "192.0.2.2"
ipv6 = ["2001:db8::10/64"]
gateway6 = "2001:db8::2""#,
    )));
    for line in [
        "- address 192.0.2.11/24 (removed)",
        "- address 2001:db8::11/64 (removed)",
        "- default via 192.0.2.1 (removed)",
        "+ default via 192.0.2.2 (added)",
    ] {
        assert!(report.contains(line), "report lacks {line:?}:\n{report}");
    }

    let mut addresses = lab.addresses_a();
    addresses.retain(|a| !a.starts_with("fe80:"));
    addresses.sort();
    assert_eq!(
        addresses,
        [
            "192.0.2.10/24",
            "198.51.100.7/24",
            "2001:db8:1::7/64",
            "2001:db8::10/64"
        ]
    );
    assert_eq!(
        lab.default_routes_a(),
        [
            ("192.0.2.2".to_string(), "213".to_string()),
            ("2001:db8::2".to_string(), "213".to_string())
        ]
    );
    let hand_route = lab.ip_json(&lab.a, &["route", "show", "203.0.113.0/24"]);
    assert_eq!(hand_route[0]["gateway"], "192.0.2.1", "{hand_route}");
    assert!(lab.ping_from_b("192.0.2.10"));
}

#[test]
fn missing_interface_is_named_and_the_others_are_configured() {
    if !runnable("missing_interface_is_named_and_the_others_are_configured") {
        return;
    }
    let lab = Lab::new();
    let missing = format!("{}x", lab.link_a);
    let output = lab.apply(&provisioning(&format!(
        "{}{}",
        interface(&missing, r#"ipv4 = ["198.51.100.10/24"]"#),
        interface(&lab.link_a, STATIC)
    )));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(
        report.contains(&format!("interface `{missing}` not found")),
        "{report}"
    );
    assert!(
        report.contains(&format!("failed interfaces: {missing}")),
        "{report}"
    );

    let mut addresses = lab.addresses_a();
    addresses.retain(|a| !a.starts_with("fe80:"));
    assert_eq!(addresses, ["192.0.2.10/24", "2001:db8::10/64"]);
    assert!(lab.ping_from_b("2001:db8::10"));
}

#[test]
fn system_files_are_written_under_the_root_and_the_hostname_is_set() {
    if !runnable("system_files_are_written_under_the_root_and_the_hostname_is_set") {
        return;
    }
    let host_hostname = nix::unistd::gethostname().unwrap();
    let lab = Lab::new();
    lab.apply_ok(&provisioning(&interface(&lab.link_a, STATIC)));

    let read = |name: &str| std::fs::read_to_string(lab.root().join("etc").join(name)).unwrap();
    assert_eq!(read("hostname"), "mail\n");
    assert_eq!(read("timezone"), "Europe/Paris\n");
    let hosts = read("hosts");
    for line in [
        "127.0.0.1\tlocalhost\n",
        "::1\tlocalhost",
        "192.0.2.10\tmail.example.org mail\n",
        "2001:db8::10\tmail.example.org mail\n",
    ] {
        assert!(hosts.contains(line), "{line:?} not in:\n{hosts}");
    }
    let resolv = read("resolv.conf");
    let servers: Vec<&str> = resolv
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .collect();
    assert_eq!(servers, ["192.0.2.53", "2001:db8::53"], "{resolv}");
    assert!(resolv.contains("search example.org\n"), "{resolv}");

    let uts = format!("--uts={}", lab.uts.display());
    assert_eq!(run(&["nsenter", &uts, "hostname"]), "mail\n");
    assert_eq!(nix::unistd::gethostname().unwrap(), host_hostname);
}

#[test]
fn accept_ra_sysctls_follow_the_file() {
    if !runnable("accept_ra_sysctls_follow_the_file") {
        return;
    }
    let lab = Lab::new();
    let sysctl = |name: &str| {
        let path = format!("/proc/sys/net/ipv6/conf/{}/{name}", lab.link_a);
        common::run_ok(lab.a.exec("cat").arg(&path))
            .trim()
            .to_string()
    };
    // A fresh link accepts router advertisements; the default file turns that off.
    assert_eq!(sysctl("accept_ra"), "1");
    lab.apply_ok(&provisioning(&interface(&lab.link_a, STATIC)));
    assert_eq!(
        (sysctl("accept_ra"), sysctl("autoconf")),
        ("0".into(), "0".into())
    );

    lab.apply_ok(&provisioning(&interface(
        &lab.link_a,
        &format!("{STATIC}\naccept_ra = true"),
    )));
    assert_eq!(
        (sysctl("accept_ra"), sysctl("autoconf")),
        ("1".into(), "1".into())
    );
}

/// Like `runnable`, and radvd installed too.
fn runnable_with_radvd(test: &str) -> bool {
    runnable(test) && common::installed(test, "radvd")
}

/// radvd in namespace B, advertising 2001:db8:5::/64 for SLAAC; killed on drop.
fn start_radvd(lab: &Lab) -> KillOnDrop {
    // radvd advertises only from a router: one that forwards IPv6.
    common::run_ok(
        lab.b
            .exec("sysctl")
            .args(["-qw", "net.ipv6.conf.all.forwarding=1"]),
    );
    let conf = lab.dir.path().join("radvd.conf");
    std::fs::write(
        &conf,
        format!(
            "interface {} {{\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  MaxRtrAdvInterval 4;\n  \
             prefix 2001:db8:5::/64 {{ AdvOnLink on; AdvAutonomous on; }};\n}};\n",
            lab.link_b
        ),
    )
    .unwrap();
    let child = lab
        .b
        .exec("radvd")
        .args(["--nodaemon", "--logmethod", "stderr"])
        .arg("--config")
        .arg(&conf)
        .arg("--pidfile")
        .arg(lab.dir.path().join("radvd.pid"))
        .spawn()
        .expect("start radvd");
    KillOnDrop(child)
}

#[test]
fn accept_ra_adds_slaac_beside_static_addresses_and_turning_it_off_removes_it() {
    let test = "accept_ra_adds_slaac_beside_static_addresses_and_turning_it_off_removes_it";
    if !runnable_with_radvd(test) {
        return;
    }
    let lab = Lab::new();
    let _radvd = start_radvd(&lab);
    let slaac = |addresses: &[String]| {
        addresses
            .iter()
            .find(|a| a.starts_with("2001:db8:5:"))
            .cloned()
    };

    lab.apply_ok(&provisioning(&interface(
        &lab.link_a,
        &format!("{STATIC}\naccept_ra = true"),
    )));
    assert!(
        common::wait_until(TIMEOUT, || slaac(&lab.addresses_a()).is_some()),
        "no SLAAC address from radvd's 2001:db8:5::/64 within 30 s: {:?}",
        lab.addresses_a()
    );
    let addresses = lab.addresses_a();
    for static_address in ["192.0.2.10/24", "2001:db8::10/64"] {
        assert!(
            addresses.iter().any(|a| a == static_address),
            "{addresses:?}"
        );
    }
    // Re-applying with router advertisements on keeps what they brought.
    let again = lab.apply_ok(&provisioning(&interface(
        &lab.link_a,
        &format!("{STATIC}\naccept_ra = true"),
    )));
    assert!(again.trim_end().ends_with("no changes"), "{again}");
    let slaac_address = slaac(&lab.addresses_a()).expect("SLAAC address kept");
    // A new static gateway next to the advertised default router (same kernel metric would
    // make the kernel refuse it as a duplicate).
    let routes = lab.default_routes_a();
    assert!(
        routes.iter().any(|(_, proto)| proto == "ra"),
        "no advertised default route: {routes:?}"
    );
    let moved = lab.apply_ok(&provisioning(&interface(
        &lab.link_a,
        &format!(
            "{}\naccept_ra = true",
            STATIC.replace("2001:db8::1\"", "2001:db8::2\"")
        ),
    )));
    assert!(
        moved.contains("+ default via 2001:db8::2 (added)"),
        "{moved}"
    );

    let report = lab.apply_ok(&provisioning(&interface(&lab.link_a, STATIC)));
    assert!(
        report.contains(&format!("- address {slaac_address} (removed)")),
        "{report}"
    );
    let addresses = lab.addresses_a();
    assert_eq!(slaac(&addresses), None, "{addresses:?}");
    assert!(
        addresses.iter().any(|a| a == "2001:db8::10/64"),
        "{addresses:?}"
    );
    assert!(lab.ping_from_b("2001:db8::10"));
}

/// Runs `net::apply` in this process (in namespace A, in a private UTS namespace, on a thread
/// of its own since both are per thread) and binds to the new IPv6 address right after it
/// returns: with duplicate address detection still running the bind would fail.
#[test]
fn services_can_bind_the_new_ipv6_address_right_after_apply() {
    if !runnable("services_can_bind_the_new_ipv6_address_right_after_apply") {
        return;
    }
    let lab = Lab::new();
    let cfg =
        letterbox::config::parse("test", &provisioning(&interface(&lab.link_a, STATIC))).unwrap();
    let netns = Path::new("/run/netns").join(&lab.a.name);
    let root = lab.root();
    let bound = std::thread::spawn(move || {
        use nix::sched::{setns, unshare, CloneFlags};
        let ns = std::fs::File::open(&netns).expect("open the namespace");
        setns(ns, CloneFlags::CLONE_NEWNET).expect("enter namespace A");
        unshare(CloneFlags::CLONE_NEWUTS).expect("private UTS namespace");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let report = runtime
            .block_on(letterbox::net::apply(&cfg, &root))
            .expect("apply");
        assert!(!report.failed(), "{report}");
        std::net::TcpListener::bind("[2001:db8::10]:0").map(|l| l.local_addr().unwrap())
    })
    .join()
    .expect("apply thread");
    let address = bound.expect("bind to 2001:db8::10 right after apply");
    assert_eq!(address.ip().to_string(), "2001:db8::10");

    let link = &lab.ip_json(&lab.a, &["addr", "show", "dev", &lab.link_a])[0];
    let static_v6 = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["local"] == "2001:db8::10")
        .expect("the static IPv6 address");
    assert!(static_v6.get("tentative").is_none(), "{static_v6}");
}

#[test]
fn dropped_link_loses_letterbox_addresses_and_routes_and_keeps_foreign_ones() {
    if !runnable("dropped_link_loses_letterbox_addresses_and_routes_and_keeps_foreign_ones") {
        return;
    }
    let lab = Lab::new();
    let second = lab.add_second_link();
    lab.apply_ok(&provisioning(&format!(
        "{}{}",
        interface(
            &lab.link_a,
            r#"ipv4 = ["192.0.2.10/24"]
ipv6 = ["2001:db8::10/64"]"#
        ),
        interface(
            &second,
            r#"ipv4 = ["198.51.100.10/24"]
gateway4 = "198.51.100.1"
ipv6 = ["2001:db8:c::10/64"]
gateway6 = "2001:db8:c::1""#
        ),
    )));
    assert_eq!(lab.default_routes_via(&second).len(), 2);
    lab.a.ip(&["addr", "add", "203.0.113.7/24", "dev", &second]);

    // The gateways move to the first link: the second link's routes must go before the
    // kernel accepts them there.
    let report = lab.apply_ok(&provisioning(&interface(&lab.link_a, STATIC)));
    for line in [
        "- address 198.51.100.10/24 (removed)",
        "- address 2001:db8:c::10/64 (removed)",
        "- default via 198.51.100.1 (removed)",
        "- default via 2001:db8:c::1 (removed)",
        "+ default via 192.0.2.1 (added)",
        "+ default via 2001:db8::1 (added)",
    ] {
        assert!(report.contains(line), "report lacks {line:?}:\n{report}");
    }
    let mut addresses = lab.addresses_of(&second);
    addresses.retain(|a| !a.starts_with("fe80:"));
    assert_eq!(addresses, ["203.0.113.7/24"]);
    assert_eq!(lab.default_routes_via(&second), []);
    assert_eq!(
        lab.default_routes_a(),
        [
            ("192.0.2.1".to_string(), "213".to_string()),
            ("2001:db8::1".to_string(), "213".to_string())
        ]
    );
}

#[test]
fn changed_prefix_length_replaces_the_address_and_keeps_the_gateway() {
    if !runnable("changed_prefix_length_replaces_the_address_and_keeps_the_gateway") {
        return;
    }
    let lab = Lab::new();
    lab.apply_ok(&provisioning(&interface(&lab.link_a, STATIC)));
    let report = lab.apply_ok(&provisioning(&interface(
        &lab.link_a,
        &STATIC
            .replace("192.0.2.10/24", "192.0.2.10/25")
            .replace("2001:db8::10/64", "2001:db8::10/80"),
    )));
    for line in [
        "- address 192.0.2.10/24 (removed)",
        "+ address 192.0.2.10/25 (added)",
        "- address 2001:db8::10/64 (removed)",
        "+ address 2001:db8::10/80 (added)",
    ] {
        assert!(report.contains(line), "report lacks {line:?}:\n{report}");
    }
    let mut addresses = lab.addresses_a();
    addresses.retain(|a| !a.starts_with("fe80:"));
    assert_eq!(addresses, ["192.0.2.10/25", "2001:db8::10/80"]);
    // The kernel drops a link's IPv4 routes with its last IPv4 address; the gateway must be
    // back all the same.
    assert_eq!(
        lab.default_routes_a(),
        [
            ("192.0.2.1".to_string(), "213".to_string()),
            ("2001:db8::1".to_string(), "213".to_string())
        ]
    );
    assert!(lab.ping_from_b("192.0.2.10"));
    assert!(lab.ping_from_b("2001:db8::10"));
}

#[test]
fn link_local_gateway6_is_the_ipv6_default_route() {
    if !runnable("link_local_gateway6_is_the_ipv6_default_route") {
        return;
    }
    let lab = Lab::new();
    let toml = provisioning(&interface(
        &lab.link_a,
        &STATIC.replace("2001:db8::1\"", "fe80::1\""),
    ));
    let report = lab.apply_ok(&toml);
    assert!(report.contains("+ default via fe80::1 (added)"), "{report}");
    assert_eq!(
        lab.default_routes_a(),
        [
            ("192.0.2.1".to_string(), "213".to_string()),
            ("fe80::1".to_string(), "213".to_string())
        ]
    );
    let again = lab.apply_ok(&toml);
    assert!(again.trim_end().ends_with("no changes"), "{again}");
}

/// gateway6 is the advertising router's own link-local address: the advertised default route
/// (it expires with the advert) must not stand in for letterbox's, with or without accept_ra.
#[test]
fn advertised_route_to_the_link_local_gateway6_does_not_replace_letterbox_route() {
    let test = "advertised_route_to_the_link_local_gateway6_does_not_replace_letterbox_route";
    if !runnable_with_radvd(test) {
        return;
    }
    let lab = Lab::new();
    let _radvd = start_radvd(&lab);
    let without_gateway6 = r#"ipv4 = ["192.0.2.10/24"]
gateway4 = "192.0.2.1"
ipv6 = ["2001:db8::10/64"]"#;
    lab.apply_ok(&provisioning(&interface(
        &lab.link_a,
        &format!("{without_gateway6}\naccept_ra = true"),
    )));
    let advertised = || {
        lab.default_routes_a()
            .into_iter()
            .find(|(_, proto)| proto == "ra")
            .map(|(gateway, _)| gateway)
    };
    assert!(
        common::wait_until(TIMEOUT, || advertised().is_some()),
        "no advertised default route within 30 s: {:?}",
        lab.default_routes_a()
    );
    let router = advertised().unwrap();
    assert!(router.starts_with("fe80:"), "{router}");
    let with_gateway6 =
        |accept_ra| format!("{without_gateway6}\ngateway6 = \"{router}\"\naccept_ra = {accept_ra}");

    let report = lab.apply_ok(&provisioning(&interface(&lab.link_a, &with_gateway6(true))));
    assert!(
        report.contains(&format!("+ default via {router} (added)")),
        "{report}"
    );
    let routes = lab.default_routes_a();
    for proto in ["ra", "213"] {
        assert!(
            routes.contains(&(router.clone(), proto.to_string())),
            "no {proto} route via {router}: {routes:?}"
        );
    }

    let report = lab.apply_ok(&provisioning(&interface(
        &lab.link_a,
        &with_gateway6(false),
    )));
    assert!(
        report.contains(&format!("- default via {router} (removed)")),
        "{report}"
    );
    assert_eq!(
        lab.default_routes_a(),
        [
            ("192.0.2.1".to_string(), "213".to_string()),
            (router.clone(), "213".to_string())
        ]
    );
}

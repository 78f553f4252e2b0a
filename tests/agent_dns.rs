//! The DNS server as a unit of the agent: `letterbox run` serves the zone on the
//! configured address, also one that arrives after it started, and SIGHUP (the path the
//! console's `dns reload` takes) serves an edited file without a restart.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;

use common::{KillOnDrop, Netns, TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A network namespace with one veth end for the agent; removed on drop.
struct Lab {
    netns: Netns,
    link: String,
}

impl Lab {
    fn new() -> Lab {
        let (netns, link) = Netns::with_veth("adns");
        Lab { netns, link }
    }

    /// `dig` inside the namespace against the agent; the answer section, one record a line.
    fn dig(&self, name: &str, qtype: &str) -> String {
        self.dig_at("192.0.2.10", name, qtype)
    }

    /// `dig` inside the namespace against `server`.
    fn dig_at(&self, server: &str, name: &str, qtype: &str) -> String {
        let out = self
            .netns
            .exec("dig")
            .arg(format!("@{server}"))
            .args(["+short", "+time=2", "+tries=1", name, qtype])
            .output()
            .expect("dig runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn serial(&self) -> Option<u32> {
        self.dig("example.org", "SOA")
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
    }
}

fn config(link: &str, accounts: &[&str]) -> String {
    let hash = letterbox::passwd::hash("box-password").unwrap();
    let mut text = format!(
        r#"version = 1

[system]
hostname = "mail"
domain = "example.org"

[[interface]]
name = "{link}"
ipv4 = ["192.0.2.10/24"]

[dns]
listen = ["192.0.2.10:53"]
"#
    );
    for name in accounts {
        text.push_str(&format!(
            "\n[[account]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\n"
        ));
    }
    text
}

fn start_agent(lab: &Lab, file: &Path, state: &Path) -> KillOnDrop {
    start_agent_with(lab, file, state, &[])
}

fn start_agent_with(lab: &Lab, file: &Path, state: &Path, args: &[&OsStr]) -> KillOnDrop {
    KillOnDrop(
        lab.netns
            .exec(common::letterbox_bin())
            .arg("run")
            .arg(file)
            .arg("--state")
            .arg(state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("letterbox run starts"),
    )
}

#[test]
fn run_mode_serves_the_zone_and_sighup_serves_an_added_account() {
    let test = "run_mode_serves_the_zone_and_sighup_serves_an_added_account";
    if !common::is_root() {
        return common::skip(test, "needs root for network namespaces");
    }
    if !common::installed(test, "dig") {
        return;
    }
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("letterbox.toml");
    std::fs::write(&file, config(&lab.link, &["alice"])).unwrap();
    let agent = start_agent(&lab, &file, &dir.path().join("state"));

    assert!(
        common::wait_until(TIMEOUT, || lab.serial().is_some()),
        "timed out waiting for the agent's DNS unit to answer"
    );
    let before = lab.serial().unwrap();
    assert_eq!(lab.dig("example.org", "MX"), "10 mail.example.org.");
    assert_eq!(lab.dig("alice.example.org", "MX"), "10 mail.example.org.");
    assert_eq!(lab.dig("bob.example.org", "MX"), "");

    std::fs::write(&file, config(&lab.link, &["alice", "bob"])).unwrap();
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGHUP).unwrap();
    assert!(
        common::wait_until(TIMEOUT, || {
            lab.dig("bob.example.org", "MX") == "10 mail.example.org."
        }),
        "timed out waiting for bob's MX after SIGHUP"
    );
    let after = lab.serial().unwrap();
    assert!(after > before, "serial {after} should exceed {before}");
    assert_eq!(lab.dig("alice.example.org", "MX"), "10 mail.example.org.");
}

#[test]
fn dns_answers_once_a_late_address_is_added() {
    let test = "dns_answers_once_a_late_address_is_added";
    if !common::is_root() {
        return common::skip(test, "needs root for network namespaces");
    }
    if !common::installed(test, "dig") {
        return;
    }
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("letterbox.toml");
    // Served on addresses no interface has yet, as when eth0 comes late.
    let late = ["192.0.2.99", "2001:db8::99"];
    let text = config(&lab.link, &["alice"]).replace(
        "listen = [\"192.0.2.10:53\"]",
        "listen = [\"192.0.2.99:53\", \"[2001:db8::99]:53\"]",
    );
    std::fs::write(&file, text).unwrap();
    let socket = dir.path().join("control.sock");
    let _agent = start_agent_with(
        &lab,
        &file,
        &dir.path().join("state"),
        &[OsStr::new("--socket"), socket.as_os_str()],
    );

    // The unit runs, rather than failing to bind and restarting.
    let dns_state = || common::unit_line(&socket, "dns");
    assert!(
        common::wait_until(TIMEOUT, || dns_state()
            .is_some_and(|l| l.contains("running"))),
        "the DNS unit is not running: {:?}",
        dns_state()
    );
    let logs = common::ctl(&socket, &["logs", "dns"]).unwrap();
    for ip in late {
        assert!(
            logs.contains(&format!("dns: {ip} is on no interface yet")),
            "bound before {ip} was there:\n{logs}"
        );
    }

    lab.netns.ip(&["link", "set", "lo", "up"]);
    lab.netns.ip(&["addr", "add", "192.0.2.99/32", "dev", "lo"]);
    // nodad: the address is usable at once, not tentative.
    lab.netns
        .ip(&["addr", "add", "2001:db8::99/128", "dev", "lo", "nodad"]);
    for ip in late {
        assert!(
            common::wait_until(TIMEOUT, || {
                lab.dig_at(ip, "alice.example.org", "MX") == "10 mail.example.org."
            }),
            "no answer on {ip} once it was added"
        );
    }
    let logs = common::ctl(&socket, &["logs", "dns"]).unwrap();
    assert!(
        !logs.contains("restarting"),
        "the DNS unit restarted meanwhile:\n{logs}"
    );
}

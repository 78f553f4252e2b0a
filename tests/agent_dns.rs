//! The DNS server as a unit of the agent: `letterbox run` serves the zone on the
//! configured address, and SIGHUP (the path the console's `dns reload` takes) serves an
//! edited file without a restart.

mod common;

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
        let out = self
            .netns
            .exec("dig")
            .args(["@192.0.2.10", "+short"])
            .args(["+time=2", "+tries=1", name, qtype])
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
    KillOnDrop(
        lab.netns
            .exec(common::letterbox_bin())
            .arg("run")
            .arg(file)
            .arg("--state")
            .arg(state)
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

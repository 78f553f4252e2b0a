//! The agent's box units under `letterbox run`: with trixie's containerd (`make
//! containerd-trixie`) and the `letterbox-mail` image (`make mail-image`), an account's box
//! comes up on the agent's bridge, takes mail over LMTP into its Maildir, comes back after a
//! restart and after its task is killed, and is gone, with containerd and its shim, when the agent stops.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use common::{KillOnDrop, Netns, TIMEOUT};
use letterbox::mail::{BoxPlan, MailPlan};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A cold import of the image and a box's first start on a loaded machine; a deadline.
const START_LIMIT: Duration = Duration::from_secs(120);

fn can_run(test: &str) -> bool {
    common::mail_parts_present(test, &["python3", "nsenter"], true)
}

/// Delivers one message to `rcpt` over LMTP at `host`:24, retrying the connection while
/// the box comes up; prints the refused recipients.
const LMTP_CLIENT: &str = r#"
import smtplib, sys, time
host, rcpt, subject = sys.argv[1:4]
deadline = time.monotonic() + 30
while True:
    try:
        lmtp = smtplib.LMTP(host, 24, timeout=5)
        break
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"LMTP {host}:24 never answered: {e}")
        time.sleep(0.05)
message = f"From: tester@example.net\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nhello\r\n"
print("refused", lmtp.sendmail("tester@example.net", [rcpt], message), flush=True)
lmtp.quit()
"#;

struct Lab {
    netns: Netns,
    dir: tempfile::TempDir,
    alice: BoxPlan,
}

impl Lab {
    fn new() -> Lab {
        let (netns, link) = Netns::with_veth("abox");
        let dir = tempfile::tempdir().unwrap();
        let hash = letterbox::passwd::hash("correct horse battery").unwrap();
        let config = format!(
            "version = 1\n\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\n\
             [[interface]]\nname = \"{link}\"\nipv4 = [\"192.0.2.10/24\"]\n\n\
             [dns]\nlisten = [\"192.0.2.10:53\"]\n\n\
             [[account]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n"
        );
        let path = dir.path().join("letterbox.toml");
        std::fs::write(&path, &config).unwrap();
        let parsed = letterbox::config::parse(&path.display().to_string(), &config).unwrap();
        let alice = MailPlan::from(&parsed).find("alice").unwrap().clone();
        Lab { netns, dir, alice }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn start_agent(&self) -> KillOnDrop {
        common::start_mail_agent(&self.netns, self.dir.path(), &common::built_mail_image())
    }

    fn ctl(&self, args: &[&str]) -> Option<String> {
        common::ctl(&self.socket(), args)
    }

    fn unit(&self, unit: &str) -> Option<String> {
        common::unit_line(&self.socket(), unit)
    }

    /// The pids of alice's box task, from its unit's log, one per start.
    fn box_pids(&self) -> Vec<i32> {
        let logs = self.ctl(&["logs", "box-alice"]).unwrap_or_default();
        logs.lines()
            .filter_map(|l| l.split("box-alice started (pid ").nth(1))
            .filter_map(|rest| rest.split(')').next()?.parse().ok())
            .collect()
    }

    fn diagnostics(&self) -> String {
        format!(
            "units:\n{}\nlogs box-alice:\n{}\nbox log:\n{}\nagent log:\n{}",
            self.ctl(&["units"]).unwrap_or_default(),
            self.ctl(&["logs", "box-alice"]).unwrap_or_default(),
            std::fs::read_to_string(self.state().join("boxes/alice/box.log")).unwrap_or_default(),
            std::fs::read_to_string(self.log()).unwrap_or_default(),
        )
    }

    /// One message to alice over LMTP, from inside the agent's namespace (where the
    /// bridge is) to her box's address.
    fn deliver(&self, subject: &str) {
        let out = self
            .netns
            .exec("python3")
            .args(["-c", LMTP_CLIENT])
            .args([&self.alice.ipv4.to_string(), &self.alice.address, subject])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.trim() == "refused {}",
            "LMTP delivery {subject:?}: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
    }

    /// The files in alice's Maildir/new, with their owners.
    fn new_mail(&self) -> Vec<(PathBuf, u32)> {
        let new = self.state().join("mail/alice/Maildir/new");
        std::fs::read_dir(&new)
            .unwrap_or_else(|e| panic!("{}: {e}", new.display()))
            .flatten()
            .map(|e| (e.path(), e.metadata().unwrap().uid()))
            .collect()
    }

    /// Processes of this run's containerd: containerd (its config is in the state
    /// directory) and its shims (their socket is).
    fn containerd_processes(&self) -> Vec<String> {
        let ours = self.state().join("containerd").display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter_map(|e| {
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                cmdline.contains(&ours).then_some(cmdline)
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let socket = self.state().join("containerd/containerd.sock");
        common::clear_containerd_leftovers(&socket, self.dir.path());
    }
}

/// Whether `pid` is a live Dovecot master.
fn is_dovecot(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "dovecot")
}

#[test]
fn a_box_per_account_takes_mail_comes_back_and_stops_with_the_agent() {
    let test = "a_box_per_account_takes_mail_comes_back_and_stops_with_the_agent";
    if !can_run(test) {
        return;
    }
    let lab = Lab::new();
    let mut agent = lab.start_agent();

    let up = common::wait_until(START_LIMIT, || lab.box_pids().len() == 1);
    assert!(up, "box-alice never started:\n{}", lab.diagnostics());
    let unit = lab.unit("box-alice").unwrap_or_default();
    assert!(unit.contains("running"), "{unit}");
    let first = lab.box_pids()[0];
    // runc's start returns before its init has exec'd Dovecot.
    assert!(
        common::wait_until(TIMEOUT, || is_dovecot(first)),
        "pid {first} is not Dovecot"
    );

    lab.deliver("before the restart");
    let mail = lab.new_mail();
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert_eq!(mail[0].1, lab.alice.id, "owned by the box's uid");

    // A restart stops the task and starts a new one, which takes mail too.
    lab.ctl(&["restart", "box-alice"])
        .expect("restart box-alice");
    let again = common::wait_until(TIMEOUT, || lab.box_pids().len() == 2);
    assert!(again, "box-alice never came back:\n{}", lab.diagnostics());
    let second = lab.box_pids()[1];
    assert_ne!(first, second);
    assert!(common::wait_until(TIMEOUT, || is_dovecot(second)));
    assert!(!is_dovecot(first), "the first task outlived the restart");
    lab.deliver("after the restart");
    assert_eq!(lab.new_mail().len(), 2, "{:?}", lab.new_mail());

    // A task that dies fails the unit, and the supervisor starts it again.
    kill(Pid::from_raw(second), Signal::SIGKILL).unwrap();
    let restarted = common::wait_until(TIMEOUT, || lab.box_pids().len() == 3);
    assert!(restarted, "box-alice not restarted:\n{}", lab.diagnostics());
    let logs = lab.ctl(&["logs", "box-alice"]).unwrap();
    assert!(
        logs.contains("the box-alice task exited with status 137"),
        "{logs}"
    );
    let third = lab.box_pids()[2];
    assert!(common::wait_until(TIMEOUT, || is_dovecot(third)));
    lab.deliver("after the crash");
    assert_eq!(lab.new_mail().len(), 3, "{:?}", lab.new_mail());

    // SIGTERM: the box stops before mail, mail before containerd; nothing is left.
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).unwrap();
    let status = common::wait_for(TIMEOUT, || agent.try_wait().unwrap())
        .expect("the agent did not exit within the limit after SIGTERM");
    assert!(status.success(), "the agent exited with {status}");
    let log = std::fs::read_to_string(lab.log()).unwrap();
    let mut at = log.find("SIGTERM received").expect("SIGTERM logged");
    for step in [
        "stopping unit box-alice",
        "unit box-alice stopped",
        "stopping unit mail",
        "stopping unit containerd",
        "unit containerd stopped",
    ] {
        match log[at..].find(step) {
            Some(i) => at += i + step.len(),
            None => panic!("{step:?} missing or out of order:\n{}", &log[at..]),
        }
    }
    assert_eq!(lab.containerd_processes(), Vec::<String>::new());
    assert!(!is_dovecot(third), "the box's Dovecot outlived the agent");
}

//! Mail end to end under `letterbox run`, with trixie's containerd and runc (`make
//! containerd-trixie`) and the amd64 `letterbox-mail` image (`make mail-image`): the agent
//! runs the front (Postfix on 25, the Dovecot IMAP proxy on 143 and 993) and a box each for
//! alice and bob. A client namespace stands for the Internet: it sends with swaks and reads
//! with Python's imaplib, over IPv4 through the front and over IPv6 straight to a box.
//!
//! The labs run one at a time: every agent names its boxes' cgroups `/letterbox/box-NAME`
//! on the one host.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Mutex;
use std::time::Duration;

use common::{KillOnDrop, Netns, TIMEOUT};
use letterbox::mail::{BoxPlan, MailPlan};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A cold import of the image and the first start of five containers on a loaded machine.
const START_LIMIT: Duration = Duration::from_secs(120);
/// Mail deferred while a box was down is tried again within the front's 5 s backoff.
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "correct horse battery";
const SERVER_V4: &str = "192.0.2.10";
const CLIENT_V4: &str = "192.0.2.20";
const SERVER_V6: &str = "2001:db8::10";
const CLIENT_V6: &str = "2001:db8::20";

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn can_run(test: &str) -> bool {
    common::mail_parts_present(test, &["python3", "nsenter", "swaks", "dig"], true)
}

/// Logs in over IMAP and prints, as JSON, the login's outcome and each INBOX message's
/// Subject and Received headers. Arguments: host port user password mode, where mode is
/// `tls` (993), `starttls` (143) or `plain` (143, no STARTTLS).
const IMAP_CLIENT: &str = r#"
import email, imaplib, json, ssl, sys
host, port, user, password, mode = sys.argv[1:6]
tls = ssl.create_default_context()
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
if mode == "tls":
    imap = imaplib.IMAP4_SSL(host, int(port), ssl_context=tls, timeout=10)
else:
    imap = imaplib.IMAP4(host, int(port), timeout=10)
    if mode == "starttls":
        imap.starttls(ssl_context=tls)
result = {"capabilities": list(imap.capabilities), "messages": []}
try:
    imap.login(user, password)
except imaplib.IMAP4.error as e:
    result["refused"] = str(e)
    print(json.dumps(result))
    sys.exit(0)
imap.select("INBOX", readonly=True)
for num in imap.search(None, "ALL")[1][0].split():
    message = email.message_from_bytes(imap.fetch(num, "(RFC822)")[1][0][1])
    result["messages"].append({
        "subject": message["Subject"],
        "received": [" ".join(r.split()) for r in message.get_all("Received", [])],
    })
imap.logout()
print(json.dumps(result))
"#;

#[derive(Debug, serde::Deserialize)]
struct Mailbox {
    capabilities: Vec<String>,
    refused: Option<String>,
    messages: Vec<Message>,
}

#[derive(Debug, serde::Deserialize)]
struct Message {
    subject: String,
    received: Vec<String>,
}

struct Lab {
    server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
    plan: MailPlan,
    agent: Option<KillOnDrop>,
}

impl Lab {
    /// The server namespace, linked to the client's, with alice and bob in the file; the
    /// agent started and every mail unit's container up.
    fn start() -> Lab {
        let (server, link) = Netns::with_veth("mail");
        let client = Netns::new("mailc");
        let peer = format!("{}b", link.strip_suffix('a').unwrap());
        server.ip(&["link", "set", &peer, "netns", &client.name]);
        client.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", &peer]);
        client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_V6}/64"),
            "dev",
            &peer,
            "nodad",
        ]);
        client.ip(&["link", "set", &peer, "up"]);
        client.ip(&["link", "set", "lo", "up"]);

        let dir = tempfile::tempdir().unwrap();
        let hash = letterbox::passwd::hash(PASSWORD).unwrap();
        let config = format!(
            "version = 1\n\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\n\
             [[interface]]\nname = \"{link}\"\nipv4 = [\"{SERVER_V4}/24\"]\n\
             ipv6 = [\"{SERVER_V6}/64\"]\n\n\
             [dns]\nlisten = [\"{SERVER_V4}:53\"]\n\n\
             [[account]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n\n\
             [[account]]\nname = \"bob\"\npassword_hash = \"{hash}\"\n"
        );
        let path = dir.path().join("letterbox.toml");
        std::fs::write(&path, &config).unwrap();
        let parsed = letterbox::config::parse(&path.display().to_string(), &config).unwrap();
        let mut lab = Lab {
            server,
            client,
            dir,
            plan: MailPlan::from(&parsed),
            agent: None,
        };
        lab.agent = Some(lab.start_agent());
        let up = common::wait_until(START_LIMIT, || {
            ["front-postfix", "front-dovecot", "box-alice", "box-bob"]
                .iter()
                .all(|unit| !lab.pids(unit).is_empty())
        });
        assert!(
            up,
            "the mail containers never started:\n{}",
            lab.diagnostics()
        );
        let answering = common::wait_until(TIMEOUT, || {
            lab.swaks(&["--quit-after", "EHLO"]).status.success()
        });
        assert!(answering, "port 25 never answered:\n{}", lab.diagnostics());
        lab
    }

    fn box_of(&self, name: &str) -> &BoxPlan {
        self.plan.find(name).unwrap()
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn start_agent(&self) -> KillOnDrop {
        common::start_mail_agent(&self.server, self.dir.path(), &common::built_mail_image())
    }

    fn ctl(&self, args: &[&str]) -> Option<String> {
        common::ctl(&self.socket(), args)
    }

    /// The pids of `unit`'s container task, one per start, from the unit's log.
    fn pids(&self, unit: &str) -> Vec<i32> {
        let marker = format!("{unit} started (pid ");
        let logs = self.ctl(&["logs", unit, "-n", "200"]).unwrap_or_default();
        logs.lines()
            .filter_map(|l| l.split(&marker).nth(1))
            .filter_map(|rest| rest.split(')').next()?.parse().ok())
            .collect()
    }

    /// The pid of `unit`'s running task: its last start's, once that process is alive.
    fn running_pid(&self, unit: &str, starts: usize) -> i32 {
        let pid = common::wait_for(START_LIMIT, || {
            let pids = self.pids(unit);
            (pids.len() >= starts).then(|| *pids.last().unwrap())
        });
        let pid = pid.unwrap_or_else(|| panic!("{unit} start {starts}:\n{}", self.diagnostics()));
        assert!(
            common::wait_until(TIMEOUT, || std::path::Path::new(&format!("/proc/{pid}"))
                .exists()),
            "{unit}'s pid {pid} is gone"
        );
        pid
    }

    fn front_postfix_log(&self) -> String {
        std::fs::read_to_string(self.state().join("front/front-postfix.log")).unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        let mut out = format!("units:\n{}\n", self.ctl(&["units"]).unwrap_or_default());
        for file in [
            "front/front-postfix.log",
            "front/front-dovecot.log",
            "boxes/alice/box.log",
            "boxes/bob/box.log",
        ] {
            let text = std::fs::read_to_string(self.state().join(file)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out += &format!(
                "{file}:\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out + &format!(
            "agent log:\n{}",
            std::fs::read_to_string(self.log()).unwrap_or_default()
        )
    }

    /// swaks from the client namespace to port 25 of the server, with `args`.
    fn swaks(&self, args: &[&str]) -> Output {
        self.client
            .exec("swaks")
            .args(["--server", SERVER_V4, "--port", "25", "--timeout", "15"])
            .args([
                "--helo",
                "client.example.net",
                "--from",
                "tester@example.net",
            ])
            .args(args)
            .output()
            .unwrap()
    }

    /// Sends one message to `to`; whether the front accepted it (250 after DATA).
    fn send(&self, to: &str, subject: &str) -> bool {
        let out = self.swaks(&["--to", to, "--header", &format!("Subject: {subject}")]);
        out.status.success()
    }

    /// The reply to RCPT TO:<to>, as swaks shows it (`<** 550 5.1.1 ...`).
    fn rcpt_reply(&self, to: &str) -> String {
        let out = self.swaks(&["--to", to, "--quit-after", "RCPT"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rcpt = text.find("RCPT TO").map(|i| &text[i..]).unwrap_or(&text);
        rcpt.lines()
            .find(|l| l.starts_with("<"))
            .unwrap_or_else(|| panic!("no reply to RCPT TO:<{to}>:\n{text}"))
            .to_string()
    }

    fn imap(&self, host: &str, port: u16, user: &str, mode: &str) -> Mailbox {
        self.try_imap(host, port, user, mode)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()))
    }

    /// [`Lab::imap`], or why the client failed.
    fn try_imap(&self, host: &str, port: u16, user: &str, mode: &str) -> Result<Mailbox, String> {
        let out = self
            .client
            .exec("python3")
            .args([
                "-c",
                IMAP_CLIENT,
                host,
                &port.to_string(),
                user,
                PASSWORD,
                mode,
            ])
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "IMAP {user}@{host}:{port} ({mode}): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// How many times each subject is in `name`'s Maildir (new and cur).
    fn delivered(&self, name: &str) -> BTreeMap<String, usize> {
        let mut count = BTreeMap::new();
        for dir in ["new", "cur"] {
            let path = self.state().join(format!("mail/{name}/Maildir/{dir}"));
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if let Some(subject) = text
                    .lines()
                    .take_while(|l| !l.is_empty())
                    .find_map(|l| l.strip_prefix("Subject: "))
                {
                    *count.entry(subject.to_string()).or_default() += 1;
                }
            }
        }
        count
    }

    /// Waits until every one of `subjects` is in `name`'s Maildir; how many times each
    /// subject is there.
    fn assert_all_delivered(&self, name: &str, subjects: &[String]) -> BTreeMap<String, usize> {
        let all = common::wait_until(DELIVERY_LIMIT, || {
            let delivered = self.delivered(name);
            subjects.iter().all(|s| delivered.contains_key(s))
        });
        let delivered = self.delivered(name);
        let missing: Vec<&String> = subjects
            .iter()
            .filter(|s| !delivered.contains_key(*s))
            .collect();
        assert!(
            all,
            "accepted but never delivered: {missing:?}\n{}",
            self.diagnostics()
        );
        delivered
    }

    /// [`Lab::assert_all_delivered`], and each exactly once.
    fn assert_delivered_once(&self, name: &str, subjects: &[String]) {
        let delivered = self.assert_all_delivered(name, subjects);
        let twice: Vec<(&String, &usize)> = delivered.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    }

    /// Sends `count` messages to alice, one after another; calls `fault` once `at` of them
    /// were accepted. The subjects the front accepted.
    fn send_with_fault(
        &self,
        tag: &str,
        count: usize,
        at: usize,
        fault: impl FnOnce(),
    ) -> Vec<String> {
        let mut accepted = Vec::new();
        let mut fault = Some(fault);
        for i in 0..count {
            let subject = format!("{tag} {i}");
            if self.send(&self.box_of("alice").address, &subject) {
                accepted.push(subject);
            }
            if accepted.len() == at {
                if let Some(fault) = fault.take() {
                    fault();
                }
            }
        }
        assert!(
            fault.is_none(),
            "only {} of {count} accepted",
            accepted.len()
        );
        accepted
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.agent.take();
        let socket = self.state().join("containerd/containerd.sock");
        common::clear_containerd_leftovers(&socket, self.dir.path());
    }
}

#[test]
fn mail_to_port_25_reaches_only_its_box_and_is_read_through_the_front_and_over_ipv6() {
    let test = "mail_to_port_25_reaches_only_its_box_and_is_read_through_the_front_and_over_ipv6";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start();
    let alice = lab.box_of("alice").clone();
    assert!(
        lab.send(&alice.address, "hello alice"),
        "{}",
        lab.diagnostics()
    );

    // Through the front's 993, by the short login and by the address.
    let mut found = None;
    for user in ["alice", alice.address.as_str()] {
        found = common::wait_for(DELIVERY_LIMIT, || {
            let inbox = lab.imap(SERVER_V4, 993, user, "tls");
            assert_eq!(inbox.refused, None, "{user} logs in over 993");
            inbox
                .messages
                .into_iter()
                .find(|m| m.subject == "hello alice")
        });
        assert!(
            found.is_some(),
            "{user}: not in the inbox\n{}",
            lab.diagnostics()
        );
    }
    let message = found.unwrap();
    let [received] = &message.received[..] else {
        panic!("one Received: header, the front's: {:?}", message.received);
    };
    assert!(
        received.contains(&format!("[{CLIENT_V4}]")) && received.contains("by mail.example.org"),
        "the front names the client's real address: {received}"
    );
    assert!(
        !received.contains("10.88."),
        "no bridge address: {received}"
    );

    let bob = lab.imap(SERVER_V4, 993, "bob", "tls");
    assert_eq!(bob.refused, None);
    assert!(
        bob.messages.iter().all(|m| m.subject != "hello alice"),
        "bob has alice's mail: {bob:?}"
    );

    // Over IPv6, straight to alice's box at the AAAA of alice.example.org.
    let aaaa = lab
        .client
        .exec("dig")
        .args([
            "+short",
            &format!("@{SERVER_V4}"),
            "alice.example.org",
            "AAAA",
        ])
        .output()
        .unwrap();
    let aaaa = String::from_utf8_lossy(&aaaa.stdout).trim().to_string();
    assert_eq!(
        aaaa,
        alice.ipv6.unwrap().to_string(),
        "alice's AAAA is her box"
    );
    let direct = lab.imap(&aaaa, 143, "alice", "starttls");
    assert_eq!(direct.refused, None);
    assert!(
        direct.messages.iter().any(|m| m.subject == "hello alice"),
        "{direct:?}"
    );
    let wrong_box = lab.imap(
        &lab.box_of("bob").ipv6.unwrap().to_string(),
        993,
        "alice",
        "tls",
    );
    assert!(wrong_box.refused.is_some(), "alice logged in on bob's box");

    // From inside alice's box, bob's Maildir does not exist: only her home is mounted.
    let pid = lab.running_pid("box-alice", 1);
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let homes: Vec<String> = std::fs::read_dir(root.join("var/vmail"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(homes, ["Maildir"], "alice's box sees only her Maildir");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(mountinfo.contains("/mail/alice"), "{mountinfo}");
    assert!(
        !mountinfo.contains("/mail/bob"),
        "bob's mail is mounted in alice's box:\n{mountinfo}"
    );
}

#[test]
fn strangers_unknown_recipients_relay_forms_and_cleartext_logins_are_refused() {
    let test = "strangers_unknown_recipients_relay_forms_and_cleartext_logins_are_refused";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start();

    for unknown in ["nobody@alice.example.org", "postmaster@example.org"] {
        let reply = lab.rcpt_reply(unknown);
        assert!(
            reply.contains("550 5.1.1"),
            "unknown recipient {unknown}: {reply}"
        );
    }
    for stranger in ["user@outside.example", "box@carol.example.org"] {
        let reply = lab.rcpt_reply(stranger);
        assert!(reply.contains("554 5.7.1"), "relay to {stranger}: {reply}");
    }
    // The classic open-relay forms, at the bare domain and at an account's: each is a
    // local part there, never a route, so each is refused at RCPT.
    for domain in ["example.org", "alice.example.org"] {
        for form in [
            format!("user%outside.example@{domain}"),
            format!("\"user@outside.example\"@{domain}"),
            format!("@{domain}:user@outside.example"),
            format!("outside.example!user@{domain}"),
        ] {
            let reply = lab.rcpt_reply(&form);
            assert!(
                reply.contains("554 5.7.1") || reply.contains("550 5.1.1"),
                "{form}: {reply}"
            );
        }
    }
    assert_eq!(
        common::postfix_queue_files(&lab.state()),
        Vec::<PathBuf>::new(),
        "nothing was queued"
    );
    assert_eq!(lab.delivered("alice"), BTreeMap::new());

    // No password in clear: 143 without STARTTLS offers no login and refuses one.
    let plain = lab.imap(SERVER_V4, 143, "alice", "plain");
    assert!(
        plain.capabilities.iter().any(|c| c == "LOGINDISABLED"),
        "{plain:?}"
    );
    assert!(
        plain.refused.is_some(),
        "a cleartext login was accepted: {plain:?}"
    );
    let tls = lab.imap(SERVER_V4, 143, "alice", "starttls");
    assert_eq!(tls.refused, None, "after STARTTLS the same login works");
    // The agent ended the TLS; Dovecot still knows the client's address and its TLS.
    let front = std::fs::read_to_string(lab.state().join("front/front-dovecot.log")).unwrap();
    let seen = format!("rip={CLIENT_V4}, lip={SERVER_V4}");
    assert!(
        front
            .lines()
            .any(|l| l.contains("proxy(alice,") && l.contains(&seen) && l.contains(" TLS")),
        "no proxied login from {CLIENT_V4} over TLS in the front's log:\n{front}"
    );
    let wrong = lab
        .client
        .exec("python3")
        .args([
            "-c",
            IMAP_CLIENT,
            SERVER_V4,
            "993",
            "alice",
            "not the password",
            "tls",
        ])
        .output()
        .unwrap();
    let wrong: Mailbox = serde_json::from_slice(&wrong.stdout).unwrap();
    assert!(wrong.refused.is_some(), "a wrong password was accepted");
}

#[test]
fn a_box_killed_while_mail_arrives_gets_every_accepted_message_once() {
    let test = "a_box_killed_while_mail_arrives_gets_every_accepted_message_once";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start();
    let first = lab.running_pid("box-alice", 1);
    let accepted = lab.send_with_fault("during a box kill", 30, 10, || {
        kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    });
    lab.running_pid("box-alice", 2);
    lab.assert_delivered_once("alice", &accepted);
}

#[test]
fn a_message_near_the_size_limit_is_delivered_into_a_box_within_its_memory_limit() {
    let test = "a_message_near_the_size_limit_is_delivered_into_a_box_within_its_memory_limit";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start();
    // 6 MB of random bytes, 8.2 MB once base64-encoded: below Postfix's 10 MB limit. Under
    // the old default (a 30 MB limit, LMTP's temporary file on the box's tmpfs) each try
    // got LMTP killed, and the message never arrived.
    let attachment = lab.dir.path().join("photo.jpg");
    let mut bytes = vec![0u8; 6 << 20];
    getrandom::fill(&mut bytes).unwrap();
    std::fs::write(&attachment, bytes).unwrap();
    let alice = lab.box_of("alice").address.clone();
    let out = lab.swaks(&[
        "--to",
        &alice,
        "--header",
        "Subject: holiday photos",
        "--attach",
        &format!("@{}", attachment.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    lab.assert_delivered_once("alice", &["holiday photos".to_string()]);
}

#[test]
fn mail_for_a_box_that_is_down_is_deferred_then_delivered() {
    let test = "mail_for_a_box_that_is_down_is_deferred_then_delivered";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start();
    let first = lab.running_pid("box-alice", 1);
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    // The supervisor waits a second before it starts the box again: the front finds no
    // box meanwhile.
    assert!(lab.send(&lab.box_of("alice").address, "while the box is down"));
    let deferred = common::wait_until(TIMEOUT, || {
        lab.front_postfix_log()
            .lines()
            .any(|l| l.contains("to=<box@alice.example.org>") && l.contains("status=deferred"))
    });
    assert!(deferred, "the front did not defer:\n{}", lab.diagnostics());
    lab.running_pid("box-alice", 2);
    lab.assert_delivered_once("alice", &["while the box is down".to_string()]);
}

#[test]
fn a_sigkilled_postfix_loses_no_accepted_mail() {
    let test = "a_sigkilled_postfix_loses_no_accepted_mail";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start();
    let postfix = lab.running_pid("front-postfix", 1);
    let accepted = lab.send_with_fault("during a Postfix kill", 30, 15, || {
        kill(Pid::from_raw(postfix), Signal::SIGKILL).unwrap();
    });
    let again = lab.running_pid("front-postfix", 2);
    assert_ne!(again, postfix);
    // Not "exactly once": a delivery under way when Postfix dies (the box said 250, the
    // queue file not yet marked) is made again after the restart, as SMTP's at-least-once
    // rule wants. That window is a few milliseconds; it is reported, not asserted away.
    let delivered = lab.assert_all_delivered("alice", &accepted);
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!("delivered twice after the SIGKILL: {twice:?}");
}

impl Lab {
    /// `letterbox ctl account ARGS`, with `password` on stdin when given; its output, and
    /// whether it succeeded.
    fn account(&self, args: &[&str], password: Option<&str>) -> (bool, String) {
        let mut child = std::process::Command::new(common::letterbox_bin())
            .arg("ctl")
            .arg("--socket")
            .arg(self.socket())
            .arg("account")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let input = password.map(|p| format!("{p}\n")).unwrap_or_default();
        let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes());
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// `dig +short NAME TYPE` from the client namespace.
    fn dig(&self, name: &str, rtype: &str) -> String {
        let out = self
            .client
            .exec("dig")
            .args([
                "+short",
                "+time=1",
                "+tries=1",
                &format!("@{SERVER_V4}"),
                name,
                rtype,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn file(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("letterbox.toml")).unwrap()
    }
}

/// Asks the zone's MX for alice every 20 ms until stopped; how many answers were missing.
fn dig_loop(lab: &Lab, stop: &std::sync::atomic::AtomicBool) -> (usize, usize) {
    let (mut asked, mut failed) = (0, 0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        asked += 1;
        if lab.dig("alice.example.org", "MX").is_empty() {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (asked, failed)
}

#[test]
fn an_account_added_live_is_published_routed_and_logs_in_and_a_deleted_one_is_refused() {
    let test = "an_account_added_live_is_published_routed_and_logs_in_and_a_deleted_one_is_refused";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let digs = s.spawn(|| dig_loop(&lab, &stop));

        let (ok, out) = lab.account(&["add", "carol", "--password-stdin"], Some(PASSWORD));
        assert!(ok, "account add carol: {out}\n{}", lab.diagnostics());
        assert!(!out.contains(PASSWORD) && !lab.file().contains(PASSWORD));
        assert!(lab.file().contains("name = \"carol\""), "{}", lab.file());
        assert_eq!(lab.dig("carol.example.org", "MX"), "10 mail.example.org.");
        assert!(!lab.dig("carol.example.org", "AAAA").is_empty());
        let inbox = lab.imap(SERVER_V4, 993, "carol", "tls");
        assert_eq!(inbox.refused, None, "carol logs in at once");
        assert!(lab.send("box@carol.example.org", "hello carol"));
        lab.assert_delivered_once(
            "carol",
            &["hello carol".into(), "Welcome to mail.example.org".into()],
        );

        let (ok, out) = lab.account(&["del", "bob"], None);
        assert!(ok, "account del bob: {out}");
        let reply = lab.rcpt_reply("box@bob.example.org");
        assert!(
            reply.contains("554 5.7.1"),
            "mail to bob after del: {reply}"
        );
        assert!(!lab.file().contains("name = \"bob\""));
        assert!(lab.dig("bob.example.org", "MX").is_empty());
        // bob's mail is kept as a dated archive that GNU tar reads, and his home is gone.
        let backups: Vec<PathBuf> = std::fs::read_dir(lab.state().join("backups"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        let [archive] = &backups[..] else {
            panic!("one archive of bob's mail: {backups:?}");
        };
        let file_name = archive.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            file_name.starts_with("bob-") && file_name.ends_with(".tar.zst"),
            "{file_name}"
        );
        let listing = common::run(&["tar", "--zstd", "-tf", &archive.display().to_string()]);
        assert!(
            listing.lines().any(|l| l.starts_with("bob/Maildir/")),
            "{listing}"
        );
        assert!(
            !lab.state().join("mail/bob").exists(),
            "bob's home is removed"
        );
        let units = lab.ctl(&["units"]).unwrap_or_default();
        assert!(!units.contains("box-bob"), "{units}");

        let (ok, listed) = lab.account(&["list"], None);
        assert!(
            ok && listed.contains("box@carol.example.org") && !listed.contains("box@bob."),
            "{listed}"
        );
        let carol = listed
            .lines()
            .find(|l| l.contains("box@carol."))
            .unwrap_or_default();
        assert!(carol.contains("running"), "carol's box: {listed}");

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (asked, failed) = digs.join().unwrap();
        assert!(asked > 10, "the dig loop ran ({asked} queries)");
        assert_eq!(failed, 0, "{failed} of {asked} queries went unanswered");
    });

    // Refused, and nothing changed: a bad name, an existing one, an unknown one to delete,
    // an empty password.
    let before = lab.file();
    for (args, password, why) in [
        (
            &["add", "Alice!", "--password-stdin"][..],
            Some(PASSWORD),
            "name",
        ),
        (
            &["add", "alice", "--password-stdin"],
            Some(PASSWORD),
            "alice",
        ),
        (&["del", "nobody"], None, "nobody"),
        (&["add", "dave", "--password-stdin"], Some(""), "password"),
    ] {
        let (ok, out) = lab.account(args, password);
        assert!(!ok && out.contains(why), "{args:?}: {out}");
    }
    assert_eq!(lab.file(), before, "a refused command changed the file");
}

#[test]
fn racing_account_commands_leave_the_file_the_zone_the_routes_and_the_boxes_agreeing() {
    let test = "racing_account_commands_leave_the_file_the_zone_the_routes_and_the_boxes_agreeing";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start();
    let results: Vec<(bool, String)> = std::thread::scope(|s| {
        let runs: Vec<_> = [
            (vec!["add", "dave", "--password-stdin"], Some(PASSWORD)),
            (vec!["add", "erin", "--password-stdin"], Some(PASSWORD)),
            (vec!["del", "bob"], None),
            (vec!["add", "bob", "--password-stdin"], Some(PASSWORD)),
        ]
        .into_iter()
        .map(|(args, password)| {
            let lab = &lab;
            s.spawn(move || lab.account(&args, password))
        })
        .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    // Whatever order they ran in, each one either did all of its work or none.
    let file = lab.file();
    let in_file: Vec<&str> = ["alice", "bob", "dave", "erin"]
        .into_iter()
        .filter(|n| file.contains(&format!("name = \"{n}\"")))
        .collect();
    assert!(results[0].0 && results[1].0, "{results:?}");
    for name in ["alice", "bob", "dave", "erin"] {
        let listed = in_file.contains(&name);
        let mx = !lab.dig(&format!("{name}.example.org"), "MX").is_empty();
        let reply = lab.rcpt_reply(&format!("box@{name}.example.org"));
        let routed = reply.starts_with("<-  250");
        let unit = lab.ctl(&["units"]).unwrap_or_default();
        let running = unit.lines().any(|l| {
            l.split_whitespace().next() == Some(&format!("box-{name}")) && l.contains("running")
        });
        assert_eq!(
            (mx, routed, running),
            (listed, listed, listed),
            "{name}: in the file {listed}, MX {mx}, RCPT {reply}, unit {running}\n{results:?}"
        );
    }
}

#[test]
fn an_account_added_within_a_second_of_a_delete_logs_in_at_once() {
    // Dovecot reloads the front's passwd-file only when its mtime, in whole seconds, or its
    // size differs from the copy it loaded. bob's login loads it; deleting bob and adding
    // rob (a name and a hash as long as his) rewrite it, each in well under a second.
    let test = "an_account_added_within_a_second_of_a_delete_logs_in_at_once";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start();
    // Starting at the top of a second keeps the three steps within one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()),
    ));
    let started = std::time::Instant::now();
    assert_eq!(lab.imap(SERVER_V4, 993, "bob", "tls").refused, None);
    let (ok, out) = lab.account(&["del", "bob", "--purge"], None);
    assert!(ok, "account del bob: {out}");
    let (ok, out) = lab.account(&["add", "rob", "--password-stdin"], Some(PASSWORD));
    assert!(ok, "account add rob: {out}\n{}", lab.diagnostics());
    println!(
        "bob's login, his delete and rob's add took {:?}",
        started.elapsed()
    );
    let rob = lab.imap(SERVER_V4, 993, "rob", "tls");
    assert_eq!(
        rob.refused,
        None,
        "rob logs in at once\n{}",
        lab.diagnostics()
    );
}

/// `status`, whole.
fn status(lab: &Lab) -> String {
    let out = std::process::Command::new(common::letterbox_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(lab.socket())
        .arg("status")
        .output()
        .expect("letterbox ctl runs");
    assert!(
        out.status.success(),
        "status: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.diagnostics()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `checks:` lines of `status`: (level, what, the rest).
fn status_checks(lab: &Lab) -> Vec<(String, String)> {
    let status = status(lab);
    let checks = status
        .split("checks:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no checks in status:\n{status}\n{}", lab.diagnostics()));
    checks
        .lines()
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let (level, rest) = l.trim().split_once(' ').unwrap();
            (level.to_string(), rest.trim().to_string())
        })
        .collect()
}

/// Every process of the tree under `pid`.
fn process_tree(pid: i32) -> Vec<i32> {
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", found[i]))
            .unwrap_or_default();
        found.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
        i += 1;
    }
    found
}

#[test]
fn status_checks_pass_on_a_healthy_system_and_fail_for_a_hung_box_a_hung_front_an_open_relay_and_an_expired_certificate(
) {
    let test = "status_checks_pass_on_a_healthy_system_and_fail_for_a_hung_box_a_hung_front_an_open_relay_and_an_expired_certificate";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start();
    lab.running_pid("box-bob", 1);
    let healthy = status_checks(&lab);
    // What each container holds in memory, and in all: the figure the 1 GB budget counts.
    let report = status(&lab);
    let memory = report
        .split("containers' memory (in use, page cache included):\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no containers' memory in status:\n{report}"));
    let megabytes: BTreeMap<&str, f64> = memory
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.next()?.parse().ok()?))
        })
        .collect();
    for id in ["front-postfix", "front-dovecot", "box-alice", "box-bob"] {
        assert!(
            megabytes.get(id).is_some_and(|&mb| mb > 0.0),
            "{id}:\n{report}"
        );
    }
    let sum: f64 = megabytes
        .iter()
        .filter(|(id, _)| **id != "total")
        .map(|(_, mb)| mb)
        .sum();
    assert!(
        (megabytes["total"] - sum).abs() < 0.5,
        "the total:\n{report}"
    );
    for what in [
        "clock",
        "disk",
        "memory",
        "zone",
        "reverse dns",
        "certificate",
        "open relay",
        "queue",
        "boxes",
        "probe mail",
    ] {
        let line = healthy.iter().find(|(_, rest)| rest.starts_with(what));
        // The data partition and the memory here are the test machine's, which may truly
        // be low.
        let fine =
            |level: &str| level == "ok" || (matches!(what, "disk" | "memory") && level == "warn");
        assert!(
            matches!(line, Some((level, _)) if fine(level)),
            "{what}: {line:?}\n{healthy:#?}\n{}",
            lab.diagnostics()
        );
    }
    // The probe went through port 25 into alice's box, and is gone from it again.
    let probe = healthy
        .iter()
        .find(|(_, r)| r.starts_with("probe mail"))
        .unwrap();
    assert!(
        probe.1.contains("delivered to box@alice.example.org"),
        "{probe:?}"
    );
    let new = lab.state().join("mail/alice/Maildir/new");
    let left = std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the probe is removed from {}", new.display());

    // A hung box: its processes stopped, its IMAP greets nobody.
    let tree = process_tree(lab.running_pid("box-bob", 1));
    let signal_all = |signal: &str| {
        for pid in &tree {
            common::run(&["kill", signal, &pid.to_string()]);
        }
    };
    signal_all("-STOP");
    let hung = status_checks(&lab);
    signal_all("-CONT");
    let boxes = hung.iter().find(|(_, r)| r.starts_with("boxes")).unwrap();
    assert_eq!(boxes.0, "FAIL", "{boxes:?}");
    assert!(
        boxes.1.contains("box-bob's IMAP does not answer"),
        "{boxes:?}"
    );

    // A hung front: port 25 still takes connections (the kernel queues them for the
    // stopped master) but nothing greets. `status` says so within its limits.
    let front = process_tree(lab.running_pid("front-postfix", 1));
    let signal_front = |signal: &str| {
        for pid in &front {
            common::run(&["kill", signal, &pid.to_string()]);
        }
    };
    signal_front("-STOP");
    let asked = std::time::Instant::now();
    let mute = status_checks(&lab);
    let took = asked.elapsed();
    signal_front("-CONT");
    let relay = mute.iter().find(|(_, r)| r.starts_with("open relay"));
    assert!(
        matches!(relay, Some((level, found)) if level == "FAIL" && found.contains("no answer within")),
        "{relay:?}"
    );
    assert!(
        took < Duration::from_secs(60),
        "status took {took:?}: {mute:?}"
    );

    // The peers' NAT mistake made by hand in the front's main.cf: every address trusted
    // (as a NAT gateway's would be, for all it forwards), and Postfix's master told to
    // reload (SIGHUP). The probe, a stranger on port 25, gets its relaying accepted.
    let main_cf = lab.state().join("front/postfix/main.cf");
    let rendered = std::fs::read_to_string(&main_cf).unwrap();
    let mut open = rendered.clone();
    for (safe, trusting) in [
        (
            "mynetworks = 127.0.0.0/8 [::1]/128",
            "mynetworks = 0.0.0.0/0 [::]/0",
        ),
        (
            "smtpd_relay_restrictions = permit_sasl_authenticated,",
            "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated,",
        ),
    ] {
        assert!(open.contains(safe), "{rendered}");
        open = open.replace(safe, trusting);
    }
    std::fs::write(&main_cf, open).unwrap();
    let postfix = lab.running_pid("front-postfix", 1);
    kill(Pid::from_raw(postfix), Signal::SIGHUP).unwrap();
    let mut relay = None;
    let relaying = common::wait_until(TIMEOUT, || {
        relay = status_checks(&lab)
            .into_iter()
            .find(|(_, r)| r.starts_with("open relay"));
        matches!(&relay, Some((level, found)) if level == "FAIL" && found.contains("accepted"))
    });
    assert!(
        relaying,
        "the open relay is not seen: {relay:?}\n{}",
        lab.diagnostics()
    );
    assert!(
        relay
            .unwrap()
            .1
            .contains("accepted relay-probe@example.net"),
        "the plain form is the one relayed"
    );
    std::fs::write(&main_cf, &rendered).unwrap();
    kill(Pid::from_raw(postfix), Signal::SIGHUP).unwrap();

    // An expired certificate for the right name and key.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["mail.example.org".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2026, 11, 2);
    params.not_after = rcgen::date_time_ymd(2026, 11, 3);
    let cert = params.self_signed(&key).unwrap();
    let tls = lab.state().join("tls");
    std::fs::write(tls.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(tls.join("cert.pem"), cert.pem()).unwrap();
    let expired = status_checks(&lab);
    let certificate = expired
        .iter()
        .find(|(_, r)| r.starts_with("certificate"))
        .unwrap();
    assert_eq!(certificate.0, "FAIL", "{certificate:?}");
    assert!(
        certificate.1.contains("expired on 2026-11-03"),
        "{certificate:?}"
    );
    let boxes = expired
        .iter()
        .find(|(_, r)| r.starts_with("boxes"))
        .unwrap();
    assert_eq!(boxes.0, "ok", "bob's box answers again: {boxes:?}");
}

#[test]
fn mail_accepted_before_the_agent_is_killed_arrives_and_is_read_once_it_runs_again() {
    let test = "mail_accepted_before_the_agent_is_killed_arrives_and_is_read_once_it_runs_again";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::start();
    // Alice's box down first, so that what the front accepts waits in its queue.
    kill(
        Pid::from_raw(lab.running_pid("box-alice", 1)),
        Signal::SIGKILL,
    )
    .unwrap();
    let agent = Pid::from_raw(lab.agent.as_ref().unwrap().id() as i32);
    let accepted = lab.send_with_fault("around an agent kill", 20, 5, || {
        kill(agent, Signal::SIGKILL).unwrap();
    });
    lab.agent.take();
    lab.agent = Some(lab.start_agent());
    // The new agent's containerd takes over (the old one is killed), every container is
    // made again, and the queue the old front left is delivered.
    lab.assert_all_delivered("alice", &accepted);
    let log = std::fs::read_to_string(lab.log()).unwrap();
    assert!(
        log.contains("left by an earlier agent"),
        "the old containerd was not killed:\n{log}"
    );
    // The old front Dovecot was killed with its container, as a power cut ends it: the
    // auth socket it left behind must not keep the new one from starting.
    let read_all = |inbox: &Mailbox| {
        accepted
            .iter()
            .all(|a| inbox.messages.iter().any(|m| &m.subject == a))
    };
    let mut last = Err("no IMAP attempt".to_string());
    let read = common::wait_until(START_LIMIT, || {
        last = lab.try_imap(SERVER_V4, 993, "alice", "tls");
        last.as_ref().is_ok_and(read_all)
    });
    assert!(
        read,
        "alice cannot read all of {accepted:?} through the front: {last:?}\n{}",
        lab.diagnostics()
    );
}

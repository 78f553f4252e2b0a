//! Submission under `letterbox run`, with trixie's containerd and runc and the amd64
//! `letterbox-mail` image, as tests/mail_e2e.rs runs them: a client namespace sends with
//! swaks to the front's 587 (STARTTLS) and 465 (TLS) and reads with Python's imaplib. The
//! file has `[mail] relayhost` pointing at an aiosmtpd smarthost with AUTH in the client
//! namespace, so mail to other domains goes there. One agent serves every check: its start
//! is most of the wall time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{KillOnDrop, Netns, TIMEOUT};

const START_LIMIT: Duration = Duration::from_secs(120);
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "correct horse battery";
const SERVER_V4: &str = "192.0.2.10";
const CLIENT_V4: &str = "192.0.2.20";
const ALICE: &str = "box@alice.example.org";
const BOB: &str = "box@bob.example.org";
/// The smarthost, in the client namespace, and the login the front must give it.
const SMARTHOST_PORT: u16 = 2587;
const RELAY_USER: &str = "letterbox-relay";
const RELAY_PASSWORD: &str = "smarthost secret 7";
/// Debian's python3, which python3-aiosmtpd installs into (a python3 earlier on the PATH
/// may be another).
const PYTHON: &str = "/usr/bin/python3";

/// Logs in over IMAP (993) and prints the Subject of each INBOX message, as JSON.
/// Arguments: host user password.
const IMAP_SUBJECTS: &str = r#"
import email, imaplib, json, ssl, sys
host, user, password = sys.argv[1:4]
tls = ssl.create_default_context()
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
imap = imaplib.IMAP4_SSL(host, 993, ssl_context=tls, timeout=10)
imap.login(user, password)
imap.select("INBOX", readonly=True)
subjects = []
for num in imap.search(None, "ALL")[1][0].split():
    subjects.append(email.message_from_bytes(imap.fetch(num, "(RFC822)")[1][0][1])["Subject"])
imap.logout()
print(json.dumps(subjects))
"#;

/// Talks SMTP by hand, where swaks would not even try: EHLO (after STARTTLS when asked),
/// then AUTH PLAIN whether offered or not. Prints, as JSON, the EHLO extensions and the
/// reply to AUTH. Arguments: host port starttls(yes|no) user password.
const RAW_AUTH: &str = r#"
import base64, json, smtplib, ssl, sys
host, port, starttls, user, password = sys.argv[1:6]
smtp = smtplib.SMTP(host, int(port), timeout=10)
if starttls == "yes":
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    smtp.ehlo("client.example.net")
    smtp.starttls(context=tls)
smtp.ehlo("client.example.net")
token = base64.b64encode(("\0" + user + "\0" + password).encode()).decode()
code, text = smtp.docmd("AUTH", "PLAIN " + token)
print(json.dumps({"extensions": sorted(smtp.esmtp_features), "auth": [code, text.decode()]}))
smtp.close()
"#;

/// A smarthost on ADDRESS PORT with STARTTLS (CERT KEY) and AUTH (only after TLS, as
/// aiosmtpd requires by default): appends each login and each message's envelope to LOG
/// as JSON lines; accepts every login, so that the log shows what the front sent.
const SMARTHOST: &str = r#"
import json, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
address, port, cert, key, log = sys.argv[1:6]
def record(entry):
    with open(log, "a") as f:
        f.write(json.dumps(entry) + "\n")
def authenticate(server, session, envelope, mechanism, data):
    record({"login": data.login.decode(), "password": data.password.decode(),
            "mechanism": mechanism, "tls": session.ssl is not None})
    return AuthResult(success=True)
class Handler:
    async def handle_DATA(self, server, session, envelope):
        record({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                "authenticated": session.authenticated,
                "data": envelope.content.decode(errors="replace")})
        return "250 OK"
tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain(cert, key)
controller = Controller(Handler(), hostname=address, port=int(port), tls_context=tls,
                        require_starttls=True, authenticator=authenticate)
controller.start()
record({"ready": True})
while True:
    time.sleep(60)
"#;

fn can_run(test: &str) -> bool {
    common::mail_parts_present(test, &["nsenter", "swaks", PYTHON], true)
        && aiosmtpd_present(test)
        && swaks_has_tls(test)
}

fn aiosmtpd_present(test: &str) -> bool {
    let ok = std::process::Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        common::skip(
            test,
            "python3-aiosmtpd is not installed (make test installs it)",
        );
    }
    ok
}

fn swaks_has_tls(test: &str) -> bool {
    let out = std::process::Command::new("swaks")
        .arg("--support")
        .output()
        .unwrap();
    let ok = String::from_utf8_lossy(&out.stdout).contains("TLS supported")
        || String::from_utf8_lossy(&out.stderr).contains("TLS supported");
    if !ok {
        common::skip(
            test,
            "swaks has no TLS: libnet-ssleay-perl is not installed (make test installs it)",
        );
    }
    ok
}

struct Lab {
    _server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
    agent: Option<KillOnDrop>,
    smarthost: Option<KillOnDrop>,
}

impl Lab {
    /// The server namespace linked to the client's; alice and bob in the file, with the
    /// smarthost as relayhost and its password in the data partition; the agent started
    /// and every mail unit's container up.
    fn start() -> Lab {
        let (server, link) = Netns::with_veth("sub");
        let client = Netns::new("subc");
        let peer = format!("{}b", link.strip_suffix('a').unwrap());
        server.ip(&["link", "set", &peer, "netns", &client.name]);
        client.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", &peer]);
        client.ip(&["link", "set", &peer, "up"]);
        client.ip(&["link", "set", "lo", "up"]);

        let dir = tempfile::tempdir().unwrap();
        let hash = letterbox::passwd::hash(PASSWORD).unwrap();
        let config = format!(
            "version = 1\n\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\n\
             [[interface]]\nname = \"{link}\"\nipv4 = [\"{SERVER_V4}/24\"]\n\n\
             [dns]\nlisten = [\"{SERVER_V4}:53\"]\n\n\
             [mail.relayhost]\nhost = \"{CLIENT_V4}\"\nport = {SMARTHOST_PORT}\n\
             username = \"{RELAY_USER}\"\npassword_file = \"relayhost-password\"\n\n\
             [[account]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n\n\
             [[account]]\nname = \"bob\"\npassword_hash = \"{hash}\"\n"
        );
        std::fs::write(dir.path().join("letterbox.toml"), &config).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(
            dir.path().join("state/relayhost-password"),
            format!("{RELAY_PASSWORD}\n"),
        )
        .unwrap();
        let agent = common::start_mail_agent(&server, dir.path(), &common::built_mail_image());
        let mut lab = Lab {
            _server: server,
            client,
            dir,
            agent: Some(agent),
            smarthost: None,
        };
        let up = common::wait_until(START_LIMIT, || {
            ["front-postfix", "front-dovecot", "box-alice", "box-bob"]
                .iter()
                .all(|unit| {
                    common::unit_line(&lab.socket(), unit).is_some_and(|l| l.contains("running"))
                })
        });
        assert!(up, "the mail units never ran:\n{}", lab.diagnostics());
        let answering = common::wait_until(TIMEOUT, || {
            [25, 587, 465].iter().all(|port| {
                let mut args = vec!["--quit-after", "EHLO"];
                if *port == 465 {
                    args.push("--tls-on-connect");
                }
                lab.swaks(*port, &args).status.success()
            })
        });
        assert!(
            answering,
            "25, 587 or 465 never answered:\n{}",
            lab.diagnostics()
        );
        lab.smarthost = Some(lab.start_smarthost());
        lab
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn smarthost_log(&self) -> PathBuf {
        self.dir.path().join("smarthost.jsonl")
    }

    /// The smarthost, with the appliance's own TLS pair (any certificate will do: the
    /// front encrypts to it without checking it).
    fn start_smarthost(&self) -> KillOnDrop {
        let tls = self.state().join("tls");
        let child = self
            .client
            .exec(PYTHON)
            .arg("-c")
            .arg(SMARTHOST)
            .arg(CLIENT_V4)
            .arg(SMARTHOST_PORT.to_string())
            .arg(tls.join("cert.pem"))
            .arg(tls.join("key.pem"))
            .arg(self.smarthost_log())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let child = KillOnDrop(child);
        let ready = common::wait_until(TIMEOUT, || {
            std::fs::read_to_string(self.smarthost_log()).is_ok_and(|t| t.contains("ready"))
        });
        assert!(ready, "the smarthost never started");
        child
    }

    fn smarthost_entries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.smarthost_log())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn diagnostics(&self) -> String {
        let mut out = format!(
            "units:\n{}\n",
            common::ctl(&self.socket(), &["units"]).unwrap_or_default()
        );
        for file in ["front/front-postfix.log", "front/front-dovecot.log"] {
            let text = std::fs::read_to_string(self.state().join(file)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out += &format!(
                "{file}:\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out + &format!(
            "agent log:\n{}",
            std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
        )
    }

    /// swaks from the client namespace to `port` of the server, with `args`.
    fn swaks(&self, port: u16, args: &[&str]) -> Output {
        self.client
            .exec("swaks")
            .args(["--server", SERVER_V4, "--port", &port.to_string()])
            .args(["--timeout", "15", "--helo", "client.example.net"])
            .args(args)
            .output()
            .unwrap()
    }

    /// An authenticated send on `port` (587: STARTTLS, 465: TLS from the start) as
    /// `login`, from `from` to `to`; swaks's transcript, and whether it was accepted.
    fn submit(
        &self,
        port: u16,
        login: &str,
        password: &str,
        from: &str,
        to: &str,
        subject: &str,
    ) -> (bool, String) {
        let tls = if port == 465 {
            "--tls-on-connect"
        } else {
            "--tls"
        };
        let out = self.swaks(
            port,
            &[
                tls,
                "--auth",
                "PLAIN",
                "--auth-user",
                login,
                "--auth-password",
                password,
                "--from",
                from,
                "--to",
                to,
                "--header",
                &format!("Subject: {subject}"),
            ],
        );
        let transcript = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), transcript)
    }

    fn raw_auth(&self, port: u16, starttls: bool) -> serde_json::Value {
        let out = self
            .client
            .exec("python3")
            .args(["-c", RAW_AUTH, SERVER_V4, &port.to_string()])
            .arg(if starttls { "yes" } else { "no" })
            .args(["alice", PASSWORD])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "raw AUTH on {port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The subjects in `user`'s INBOX, read through the front's 993.
    fn inbox(&self, user: &str) -> Vec<String> {
        let out = self
            .client
            .exec("python3")
            .args(["-c", IMAP_SUBJECTS, SERVER_V4, user, PASSWORD])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "IMAP {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The bytes of the message with `subject` in `user`'s Maildir.
    fn message_file(&self, user: &str, subject: &str) -> Vec<u8> {
        let maildir = self.state().join(format!("mail/{user}/Maildir"));
        let header = format!("Subject: {subject}");
        ["new", "cur"]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(maildir.join(d))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .find_map(|e| {
                let bytes = std::fs::read(e.path()).ok()?;
                String::from_utf8_lossy(&bytes)
                    .contains(&header)
                    .then_some(bytes)
            })
            .unwrap_or_else(|| panic!("{subject}: not in {user}'s Maildir"))
    }

    fn assert_in_inbox(&self, user: &str, subject: &str) {
        let found = common::wait_until(DELIVERY_LIMIT, || {
            self.inbox(user).iter().any(|s| s == subject)
        });
        assert!(
            found,
            "{subject:?} never reached {user}'s inbox:\n{}",
            self.diagnostics()
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.smarthost.take();
        self.agent.take();
        let socket = self.state().join("containerd/containerd.sock");
        common::clear_containerd_leftovers(&socket, self.dir.path());
    }
}

/// The refusal in swaks's transcript, if any: the reply line it marks `<**` (`<~*` over
/// TLS).
fn refusal(transcript: &str) -> Option<&str> {
    transcript
        .lines()
        .find(|l| l.starts_with("<** ") || l.starts_with("<~* "))
}

#[test]
fn submission_logs_in_over_tls_only_sends_as_the_login_only_and_relays_through_the_smarthost() {
    let test =
        "submission_logs_in_over_tls_only_sends_as_the_login_only_and_relays_through_the_smarthost";
    if !can_run(test) {
        return;
    }
    let lab = Lab::start();

    // No password in clear: 587 offers AUTH only after STARTTLS, and refuses it before.
    let clear = lab.raw_auth(587, false);
    assert!(
        !clear["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "auth"),
        "AUTH offered in clear: {clear}"
    );
    assert_eq!(clear["auth"][0], 530, "AUTH in clear on 587: {clear}");
    let over_tls = lab.raw_auth(587, true);
    assert!(
        over_tls["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "auth"),
        "no AUTH after STARTTLS on 587: {over_tls}"
    );
    assert_eq!(over_tls["auth"][0], 235, "alice's login on 587: {over_tls}");

    // Port 25 offers no login, even over TLS, and refuses one.
    let port25 = lab.raw_auth(25, true);
    assert!(
        !port25["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "auth"),
        "AUTH offered on 25: {port25}"
    );
    assert_eq!(port25["auth"][0], 503, "AUTH on 25: {port25}");

    // A wrong password, and a sender that is not the login's, are refused.
    let (sent, transcript) = lab.submit(587, "alice", "not the password", ALICE, BOB, "wrong");
    assert!(
        !sent && refusal(&transcript).is_some_and(|l| l.contains("535 5.7.8")),
        "a wrong password:\n{transcript}"
    );
    for not_hers in [BOB, "alice@outside.test"] {
        let (sent, transcript) = lab.submit(587, "alice", PASSWORD, not_hers, BOB, "forged");
        assert!(
            !sent
                && refusal(&transcript)
                    .is_some_and(|l| l.contains("5.7.1") && l.contains("not owned by user alice")),
            "alice sending as {not_hers}:\n{transcript}"
        );
    }

    // Without a login, on 25, no one passes for an account: not a stranger, not bob's box.
    let out = lab.swaks(25, &["--from", BOB, "--to", ALICE]);
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success()
            && refusal(&transcript)
                .is_some_and(|l| l.contains("5.7.1") && l.contains("Sender address rejected")),
        "a stranger sending as bob on 25:\n{transcript}"
    );
    let bob_box = common::wait_for(TIMEOUT, || {
        let logs = common::ctl(&lab.socket(), &["logs", "box-bob", "-n", "200"])?;
        logs.lines()
            .filter_map(|l| l.split("box-bob started (pid ").nth(1))
            .filter_map(|rest| rest.split(')').next()?.parse::<i32>().ok())
            .next_back()
    })
    .expect("bob's box's pid");
    let from_bobs_box = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{bob_box}/ns/net"))
        .args([
            "swaks",
            "--server",
            "10.88.0.1",
            "--port",
            "25",
            "--timeout",
            "15",
        ])
        .args(["--helo", "bob.example.org", "--from", ALICE, "--to", ALICE])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&from_bobs_box.stdout).into_owned();
    assert!(
        !from_bobs_box.status.success()
            && refusal(&transcript).is_some_and(|l| l.contains("Sender address rejected")),
        "bob's box sending as alice:\n{transcript}"
    );

    // alice's mail to bob, on 587 by her short login and on 465 by her address, arrives.
    let (sent, transcript) = lab.submit(587, "alice", PASSWORD, ALICE, BOB, "over 587");
    assert!(sent, "alice on 587:\n{transcript}\n{}", lab.diagnostics());
    let (sent, transcript) = lab.submit(465, ALICE, PASSWORD, ALICE, BOB, "over 465");
    assert!(sent, "alice on 465:\n{transcript}\n{}", lab.diagnostics());
    lab.assert_in_inbox("bob", "over 587");
    lab.assert_in_inbox("bob", "over 465");
    // Signed on the way with both of the device's keys (d= alice's domain), which
    // python3-dkim verifies against our own DNS.
    let delivered = lab.message_file("bob", "over 587");
    let (mut verdicts, stderr) = common::dkim_verify(&lab.client, SERVER_V4, &delivered);
    verdicts.sort();
    let mut keys: Vec<String> = std::fs::read_dir(lab.state().join("dkim"))
        .unwrap()
        .flatten()
        .filter_map(|e| Some(e.file_name().to_str()?.strip_suffix(".key")?.to_string()))
        .map(|selector| format!("{selector}=ok"))
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 2, "an Ed25519 and an RSA key: {keys:?}");
    assert_eq!(
        verdicts,
        keys,
        "{stderr}\n{}",
        String::from_utf8_lossy(&delivered)
    );
    let text = String::from_utf8_lossy(&delivered);
    assert!(text.contains("d=alice.example.org"), "{text}");
    for subject in ["wrong", "forged"] {
        assert!(
            !lab.inbox("bob").iter().any(|s| s == subject),
            "a refused message arrived"
        );
    }

    // Mail to another domain goes through the smarthost, logged in over TLS.
    let (sent, transcript) = lab.submit(
        587,
        "alice",
        PASSWORD,
        ALICE,
        "someone@outside.test",
        "to the world",
    );
    assert!(sent, "alice to outside.test:\n{transcript}");
    let relayed = common::wait_for(DELIVERY_LIMIT, || {
        lab.smarthost_entries().into_iter().find(|e| {
            e["data"]
                .as_str()
                .is_some_and(|d| d.contains("to the world"))
        })
    });
    let relayed = relayed.unwrap_or_else(|| {
        panic!(
            "the smarthost never got it: {:?}\n{}",
            lab.smarthost_entries(),
            lab.diagnostics()
        )
    });
    assert_eq!(relayed["from"], ALICE);
    assert_eq!(relayed["to"], serde_json::json!(["someone@outside.test"]));
    assert_eq!(relayed["authenticated"], true, "{relayed}");
    let logins: Vec<serde_json::Value> = lab
        .smarthost_entries()
        .into_iter()
        .filter(|e| e.get("login").is_some())
        .collect();
    assert!(!logins.is_empty(), "the front never logged in");
    for login in &logins {
        assert_eq!(login["login"], RELAY_USER, "{login}");
        assert_eq!(login["password"], RELAY_PASSWORD, "{login}");
        assert_eq!(
            login["tls"], true,
            "the password travelled in clear: {login}"
        );
    }
    // The password is in no log and not in letterbox.toml.
    for file in [
        lab.dir.path().join("agent.log"),
        lab.state().join("front/front-postfix.log"),
        lab.dir.path().join("letterbox.toml"),
    ] {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            !text.contains(RELAY_PASSWORD),
            "{} has the password",
            file.display()
        );
    }
    // Only Postfix's uid may ask the front's Dovecot about logins.
    let auth = std::fs::metadata(lab.state().join("front/sockets/auth.sock")).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!((auth.mode() & 0o777, auth.uid()), (0o600, 100), "auth.sock");
    }
    assert_mode_root(&lab.state().join("front/relay"), 0o700);
    assert_mode_root(&lab.state().join("front/relay/password"), 0o600);
}

fn assert_mode_root(path: &Path, mode: u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (mode, 0),
        "{}",
        path.display()
    );
}

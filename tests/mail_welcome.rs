//! The welcome mail: its rendering against tests/golden/mail/welcome.eml, and its sending
//! over SMTP to a real server (aiosmtpd, an RFC 5321 server independent of lettre) on
//! 127.0.0.1:25 of a network namespace of its own; a server that does not answer, or is
//! not there, is an error naming it, within the timeout.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use letterbox::mail::welcome::{send, welcome_message, WelcomeError, SEND_TIMEOUT};
use letterbox::mail::MailPlan;

const FIXTURE: &str = r#"version = 1
[system]
hostname = "mail"
domain = "example.org"
[[interface]]
name = "eth0"
ipv4 = ["192.0.2.10/24"]
[[account]]
name = "alice"
password_hash = "$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/"
"#;

/// 2025-11-24 16:00:00 UTC.
const NOW: u64 = 1_764_000_000;

/// Debian's python3, which python3-aiosmtpd installs into (a python3 earlier on the PATH
/// may be another).
const PYTHON: &str = "/usr/bin/python3";

fn plan() -> MailPlan {
    MailPlan::from(&letterbox::config::parse("fixture.toml", FIXTURE).expect("a valid fixture"))
}

fn alice_welcome() -> lettre::Message {
    let plan = plan();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
    welcome_message(&plan, plan.find("alice").unwrap(), now).unwrap()
}

#[test]
fn the_welcome_mail_matches_its_golden_file() {
    let formatted = String::from_utf8(alice_welcome().formatted()).unwrap();
    assert!(
        formatted.matches('\n').count() == formatted.matches("\r\n").count(),
        "every line ends in CRLF, as SMTP wants:\n{formatted:?}"
    );
    // The golden file has LF line ends, so that git and editors leave it alone.
    letterbox::golden::check("mail/welcome.eml", &formatted.replace("\r\n", "\n"));
}

fn aiosmtpd_installed(test: &str) -> bool {
    let found = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        common::skip(
            test,
            "aiosmtpd is not installed for /usr/bin/python3 (make test installs python3-aiosmtpd)",
        );
    }
    found
}

/// Kills the server when the test ends, failed or not.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The one message in the Maildir `dir`, once it is there.
fn delivered(dir: &Path) -> Option<String> {
    let entries = std::fs::read_dir(dir.join("new")).ok()?;
    let files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    assert!(files.len() <= 1, "one message only: {files:?}");
    Some(std::fs::read_to_string(files.first()?).unwrap())
}

#[test]
fn the_welcome_mail_is_sent_over_smtp_to_port_25() {
    let test = "the_welcome_mail_is_sent_over_smtp_to_port_25";
    if !common::is_root() {
        common::skip(test, "needs root for a network namespace");
        return;
    }
    if !aiosmtpd_installed(test) {
        return;
    }
    let ns = common::Netns::new("welcome");
    ns.ip(&["link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().unwrap();
    // aiosmtpd makes the Maildir (new, cur, tmp) only where nothing is yet.
    let maildir = dir.path().join("Maildir");
    let _server = Server(
        ns.exec(PYTHON)
            .args(["-m", "aiosmtpd", "-n", "-l", "127.0.0.1:25"])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .spawn()
            .unwrap(),
    );
    let server: SocketAddr = "127.0.0.1:25".parse().unwrap();
    let listening = common::wait_until(Duration::from_secs(20), || {
        ns.block_on_inside(async { tokio::net::TcpStream::connect(server).await.is_ok() })
    });
    assert!(listening, "aiosmtpd listens on {server}");

    ns.block_on_inside(send(alice_welcome(), server)).unwrap();

    let message = delivered(&maildir).expect("the server kept the message");
    for line in [
        // The envelope, as the server received it.
        "X-MailFrom: postmaster@example.org",
        "X-RcptTo: box@alice.example.org",
        "From: postmaster@example.org",
        "To: box@alice.example.org",
        "Subject: Welcome to mail.example.org",
        "Date: Mon, 24 Nov 2025 16:00:00 +0000",
        "Message-ID: <welcome.alice.1764000000@mail.example.org>",
        "  Server:     mail.example.org",
        "  User name:  alice (or box@alice.example.org)",
    ] {
        assert!(
            message.lines().any(|l| l == line),
            "{line:?} in the message as received:\n{message}"
        );
    }
}

fn send_on_the_host(server: SocketAddr) -> (WelcomeError, Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let error = runtime.block_on(send(alice_welcome(), server)).unwrap_err();
    (error, start.elapsed())
}

#[test]
fn a_server_that_is_silent_or_not_there_is_an_error_naming_it() {
    // Accepts the connection (the kernel does, from its backlog) but never greets.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = silent.local_addr().unwrap();
    let (error, took) = send_on_the_host(server);
    assert!(
        took >= SEND_TIMEOUT && took < SEND_TIMEOUT * 3,
        "gave up after {took:?}, not the timeout {SEND_TIMEOUT:?}"
    );
    assert!(
        matches!(&error, WelcomeError::Timeout { server: s, .. } if *s == server),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "sending mail to box@alice.example.org through {server}: \
             no answer within 5s"
        )
    );

    drop(silent);
    let (error, took) = send_on_the_host(server);
    assert!(took < SEND_TIMEOUT, "refused at once, took {took:?}");
    assert!(
        matches!(&error, WelcomeError::Send { server: s, .. } if *s == server),
        "{error:?}"
    );
}

//! DKIM, SPF and DMARC at the front, end to end under `letterbox run` (as tests/mail_e2e):
//! the agent's milter checks mail from outside and signs ours. A client namespace stands
//! for the Internet (it has no resolver: outside domains give `temperror`); python3-dkim
//! signs with a test key that is published before the agent starts, and verifies the
//! agent's own signatures against the agent's DNS server.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{KillOnDrop, Netns, TIMEOUT};

/// A cold import of the image and the first start of the containers on a loaded machine.
const START_LIMIT: Duration = Duration::from_secs(120);
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "correct horse battery";
const SERVER_V4: &str = "192.0.2.10";
const CLIENT_V4: &str = "192.0.2.20";
const DOMAIN: &str = "example.org";
const HOSTNAME: &str = "mail.example.org";
/// The selector of the test's own key, published by the zone from `STATE/dkim/test.pub`.
const TEST_SELECTOR: &str = "test";

fn can_run(test: &str) -> bool {
    common::mail_parts_present(
        test,
        &["swaks", "dig", "openssl", "dkimsign", common::PYTHON],
        true,
    )
}

/// Prints, as JSON, every INBOX message's Subject and Authentication-Results headers.
const IMAP_CLIENT: &str = r#"
import email, imaplib, json, ssl, sys
host, user, password = sys.argv[1:4]
tls = ssl.create_default_context()
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
imap = imaplib.IMAP4_SSL(host, 993, ssl_context=tls, timeout=10)
imap.login(user, password)
imap.select("INBOX", readonly=True)
out = []
for num in imap.search(None, "ALL")[1][0].split():
    message = email.message_from_bytes(imap.fetch(num, "(RFC822)")[1][0][1])
    out.append({
        "subject": message["Subject"],
        "results": [" ".join(r.split()) for r in message.get_all("Authentication-Results", [])],
    })
imap.logout()
print(json.dumps(out))
"#;

#[derive(Debug, serde::Deserialize)]
struct Message {
    subject: String,
    results: Vec<String>,
}

struct Lab {
    server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
    alice: String,
    agent: Option<KillOnDrop>,
}

impl Lab {
    /// The server and client namespaces; alice in the file (the zone publishes our DMARC
    /// `p=reject` with strict alignment itself) and the test's key published; the agent
    /// started, port 25 answering.
    fn start() -> Lab {
        let (server, link) = Netns::with_veth("dkim");
        let client = Netns::new("dkimc");
        let peer = format!("{}b", link.strip_suffix('a').unwrap());
        server.ip(&["link", "set", &peer, "netns", &client.name]);
        client.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", &peer]);
        client.ip(&["link", "set", &peer, "up"]);
        client.ip(&["link", "set", "lo", "up"]);

        let dir = tempfile::tempdir().unwrap();
        let hash = letterbox::passwd::hash(PASSWORD).unwrap();
        let config = format!(
            "version = 1\n\n[system]\nhostname = \"mail\"\ndomain = \"{DOMAIN}\"\n\n\
             [[interface]]\nname = \"{link}\"\nipv4 = [\"{SERVER_V4}/24\"]\n\n\
             [dns]\nlisten = [\"{SERVER_V4}:53\"]\n\n\
             [[account]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n"
        );
        std::fs::write(dir.path().join("letterbox.toml"), &config).unwrap();
        // The test's signing key, published the way the agent publishes its own.
        let dkim = dir.path().join("state/dkim");
        std::fs::create_dir_all(&dkim).unwrap();
        let key = dir.path().join("test.key");
        common::run_ok(
            std::process::Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(&key)
                .arg("2048"),
        );
        common::run_ok(
            std::process::Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(dkim.join(format!("{TEST_SELECTOR}.pub"))),
        );
        let mut lab = Lab {
            server,
            client,
            dir,
            alice: format!("box@alice.{DOMAIN}"),
            agent: None,
        };
        lab.agent = Some(common::start_mail_agent(
            &lab.server,
            lab.dir.path(),
            &common::built_mail_image(),
        ));
        let answering = common::wait_until(START_LIMIT, || {
            lab.swaks(&["--quit-after", "EHLO"]).status.success()
        });
        assert!(answering, "port 25 never answered:\n{}", lab.diagnostics());
        lab
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn diagnostics(&self) -> String {
        let socket = self.dir.path().join("control.sock");
        let mut out = format!(
            "units:\n{}\nmilter:\n{}\n",
            common::ctl(&socket, &["units"]).unwrap_or_default(),
            common::ctl(&socket, &["logs", "milter", "-n", "50"]).unwrap_or_default()
        );
        let postfix = std::fs::read_to_string(self.state().join("front/front-postfix.log"))
            .unwrap_or_default();
        let tail: Vec<&str> = postfix.lines().rev().take(30).collect();
        out += &format!(
            "front-postfix:\n{}\n",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        out + &format!(
            "agent log:\n{}",
            std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
        )
    }

    /// swaks from the client namespace to port 25, from an outside envelope sender.
    fn swaks(&self, args: &[&str]) -> Output {
        self.client
            .exec("swaks")
            .args(["--server", SERVER_V4, "--port", "25", "--timeout", "30"])
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

    /// A message to alice from `from`, with `subject`; signed with the test key when
    /// `sign`, and with its Date changed after signing when `forge`.
    fn message(&self, from: &str, subject: &str, sign: bool, forge: bool) -> PathBuf {
        let text = format!(
            "From: <{from}>\r\nTo: <{}>\r\nSubject: {subject}\r\n\
             Date: Mon, 30 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@example.net>\r\n\
             \r\nHello from outside.\r\n",
            self.alice
        );
        let path = self.dir.path().join(format!("{subject}.eml"));
        if !sign {
            std::fs::write(&path, text).unwrap();
            return path;
        }
        let unsigned = self.dir.path().join(format!("{subject}.unsigned"));
        std::fs::write(&unsigned, text).unwrap();
        let out = std::process::Command::new("dkimsign")
            .args([TEST_SELECTOR, DOMAIN])
            .arg(self.dir.path().join("test.key"))
            .stdin(std::fs::File::open(&unsigned).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "dkimsign: {:?}", out);
        let mut signed = String::from_utf8(out.stdout).unwrap();
        assert!(signed.contains("DKIM-Signature"), "{signed}");
        if forge {
            // A signed header changed: the signature no longer verifies (a changed body
            // would only be `neutral`, its hash mismatched).
            signed = signed.replace("12:00:00", "12:00:01");
        }
        std::fs::write(&path, signed).unwrap();
        path
    }

    /// Sends the message at `path` to alice; swaks' transcript.
    fn send_file(&self, path: &Path) -> Output {
        self.swaks(&["--to", &self.alice, "--data", &path.display().to_string()])
    }

    fn inbox(&self) -> Vec<Message> {
        let out = self
            .client
            .exec(common::PYTHON)
            .args(["-c", IMAP_CLIENT, SERVER_V4, "alice", PASSWORD])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "IMAP: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The Authentication-Results headers of the message with `subject`, once it arrived.
    fn results_of(&self, subject: &str) -> Vec<String> {
        let found = common::wait_for(DELIVERY_LIMIT, || {
            self.inbox().into_iter().find(|m| m.subject == subject)
        });
        found
            .unwrap_or_else(|| panic!("{subject}: not delivered\n{}", self.diagnostics()))
            .results
    }

    fn dig(&self, name: &str) -> String {
        let out = self
            .client
            .exec("dig")
            .args([&format!("@{SERVER_V4}"), name, "TXT", "+short", "+time=2"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).replace("\" \"", "")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.agent.take());
        let socket = self.state().join("containerd/containerd.sock");
        common::clear_containerd_leftovers(&socket, self.dir.path());
    }
}

fn one_result(results: &[String]) -> &str {
    assert_eq!(results.len(), 1, "one Authentication-Results: {results:?}");
    assert!(
        results[0].starts_with(&format!("{HOSTNAME};")),
        "in our host name: {results:?}"
    );
    &results[0]
}

#[test]
fn inbound_mail_gets_dkim_spf_dmarc_results_and_ours_is_signed_with_published_keys() {
    let test = "inbound_mail_gets_dkim_spf_dmarc_results_and_ours_is_signed_with_published_keys";
    if !can_run(test) {
        return;
    }
    let lab = Lab::start();

    // A forged signature (the Date changed after signing), From: outside, and a forged
    // Authentication-Results in our name: dkim=fail, and only our header is left.
    let forged = lab.message("tester@example.net", "forged", true, true);
    let text = std::fs::read_to_string(&forged).unwrap();
    std::fs::write(
        &forged,
        format!("Authentication-Results: {HOSTNAME}; dkim=pass header.d={DOMAIN}\r\n{text}"),
    )
    .unwrap();
    let out = lab.send_file(&forged);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let results = lab.results_of("forged");
    let result = one_result(&results);
    assert!(
        result.contains("dkim=fail")
            && result.contains(&format!("header.i=@{DOMAIN} header.s={TEST_SELECTOR}")),
        "{result}"
    );
    assert!(result.contains("spf="), "{result}");

    // Correctly signed by our domain's (test) key: dkim=pass, and DMARC passes by it.
    let good = lab.message(&format!("tester@{DOMAIN}"), "signed", true, false);
    let out = lab.send_file(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let results = lab.results_of("signed");
    let result = one_result(&results);
    assert!(
        result.contains("dkim=pass") && result.contains("dmarc=pass"),
        "{result}"
    );

    // From: our domain, unsigned, from outside: our p=reject refuses it at end of data.
    let unsigned = lab.message(&format!("tester@{DOMAIN}"), "unsigned", false, false);
    let out = lab.send_file(&unsigned);
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "accepted:\n{transcript}");
    assert!(
        transcript.contains("<** 550 5.7.1") && transcript.contains("DMARC"),
        "{transcript}"
    );

    // The agent's keys: private 0600 on the data partition, published by our DNS.
    let dkim = lab.state().join("dkim");
    let keys = common::wait_for(TIMEOUT, || {
        let mut keys: Vec<String> = std::fs::read_dir(&dkim)
            .ok()?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".key")
                    .map(String::from)
            })
            .collect();
        keys.sort();
        (keys.len() == 2).then_some(keys)
    })
    .unwrap_or_else(|| panic!("no keys in {}\n{}", dkim.display(), lab.diagnostics()));
    let year = keys[0].trim_start_matches("ed");
    assert_eq!(keys, [format!("ed{year}"), format!("rsa{year}")]);
    for (selector, kind) in [(&keys[0], "ed25519"), (&keys[1], "rsa")] {
        let mode = std::fs::metadata(dkim.join(format!("{selector}.key")))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{selector}.key");
        let name = format!("{selector}._domainkey.{DOMAIN}");
        let published = common::wait_for(TIMEOUT, || {
            let txt = lab.dig(&name);
            txt.contains(&format!("k={kind}")).then_some(txt)
        });
        assert!(published.is_some(), "{name}: {}", lab.dig(&name));
    }

    // Ours, sent from this machine (trusted as a logged-in client is, as the welcome mail
    // is sent; port 25 refuses an account's address as the envelope sender unless logged
    // in, so postmaster's): signed with both keys, which python3-dkim verifies against
    // our DNS. tests/mail_submission checks a logged-in send on 587.
    let from_alice = format!("From: <{}>", lab.alice);
    let out = lab
        .server
        .exec("swaks")
        .args(["--server", "127.0.0.1", "--port", "25", "--timeout", "30"])
        .args([
            "--from",
            &format!("postmaster@{DOMAIN}"),
            "--to",
            &lab.alice,
        ])
        .args(["--header", "Subject: outbound", "--header", &from_alice])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let maildir = lab.state().join("mail/alice/Maildir");
    let delivered = common::wait_for(DELIVERY_LIMIT, || {
        ["new", "cur"].iter().find_map(|d| {
            std::fs::read_dir(maildir.join(d))
                .ok()?
                .flatten()
                .find_map(|e| {
                    let text = std::fs::read(e.path()).ok()?;
                    String::from_utf8_lossy(&text)
                        .contains("Subject: outbound")
                        .then_some(text)
                })
        })
    })
    .unwrap_or_else(|| panic!("outbound: not delivered\n{}", lab.diagnostics()));
    let (mut verdicts, stderr) = common::dkim_verify(&lab.client, SERVER_V4, &delivered);
    verdicts.sort();
    assert_eq!(
        verdicts,
        [format!("{}=ok", keys[0]), format!("{}=ok", keys[1])],
        "{stderr}\n{}",
        String::from_utf8_lossy(&delivered)
    );
}

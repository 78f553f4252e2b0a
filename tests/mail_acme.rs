//! ACME under `letterbox run` (trixie's containerd and runc, the amd64 `letterbox-mail`
//! image), against Debian's `pebble` in the server's namespace: pebble validates DNS-01
//! by asking the agent's own DNS server for each name (the host's, and the webmail's
//! `example.org`), the certificate is installed and served on 993 and 465 (and by alice's
//! box, on its own 993), and a renewal (pebble issues for 180 s, so one is due a third of
//! that before expiry, 120 s after issue) is served on both while an SMTP and an IMAP
//! session opened before it carry on.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{KillOnDrop, Netns, TIMEOUT};

const START_LIMIT: Duration = Duration::from_secs(180);
const ISSUE_LIMIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "correct horse battery";
const SERVER_V4: &str = "192.0.2.10";
const FQDN: &str = "mail.example.org";
const PYTHON: &str = "/usr/bin/python3";
/// Pebble's certificates' lifetime: the agent renews a third of it before expiry, 120 s
/// after issue, and the renewed one 120 s later still, well after the test is done with it.
const VALIDITY_SECONDS: u64 = 180;
/// From the first install to the second: the 120 s above, and a loaded machine's slack.
const RENEW_LIMIT: Duration = Duration::from_secs(300);

/// Opens a session on HOST PORT (993: IMAP, logged in as USER PASSWORD; 465: SMTP, after
/// EHLO), prints the served certificate's SHA-256 as hex, then waits for the file GO and,
/// on the same connection, runs a command (IMAP SELECT INBOX, SMTP EHLO) and prints
/// "still open".
const SESSION_ACROSS_RENEWAL: &str = r#"
import hashlib, imaplib, os, smtplib, ssl, sys, time
host, port, user, password, go = sys.argv[1:6]
tls = ssl.create_default_context()
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
if port == "993":
    session = imaplib.IMAP4_SSL(host, 993, ssl_context=tls, timeout=300)
    session.login(user, password)
    sock = session.sock
else:
    session = smtplib.SMTP_SSL(host, int(port), context=tls, timeout=300)
    session.ehlo("client.example.net")
    sock = session.sock
print(hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest(), flush=True)
while not os.path.exists(go):
    time.sleep(0.2)
if port == "993":
    ok = session.select("INBOX")[0] == "OK"
    session.logout()
else:
    ok = session.ehlo("client.example.net")[0] == 250
    session.quit()
print("still open" if ok else "refused", flush=True)
"#;

/// Fetches URL trusting CAFILE only and prints the body: pebble's root, from its
/// management interface.
const FETCH: &str = r#"
import ssl, sys, urllib.request
url, cafile = sys.argv[1:3]
print(urllib.request.urlopen(url, context=ssl.create_default_context(cafile=cafile)).read().decode(), end="")
"#;

fn can_run(test: &str) -> bool {
    common::mail_parts_present(test, &["nsenter", "openssl", PYTHON, "pebble"], true)
}

struct Lab {
    server: Netns,
    dir: tempfile::TempDir,
    _pebble: KillOnDrop,
    agent: Option<KillOnDrop>,
    /// alice's box's address on the bridge, where its Dovecot serves 993 itself.
    box_v4: String,
}

impl Lab {
    fn start() -> Lab {
        let (server, link) = Netns::with_veth("acme");
        server.ip(&["link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let pebble = start_pebble(&server, dir.path(), &state.join("pebble-ca.pem"));
        let hash = letterbox::passwd::hash(PASSWORD).unwrap();
        let config = format!(
            "version = 1\n\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\n\
             [[interface]]\nname = \"{link}\"\nipv4 = [\"{SERVER_V4}/24\"]\n\n\
             [dns]\nlisten = [\"{SERVER_V4}:53\"]\n\n\
             [tls]\nacme = true\nacme_directory = \"https://127.0.0.1:14000/dir\"\n\
             acme_contact = \"mailto:postmaster@example.org\"\nacme_ca_file = \"pebble-ca.pem\"\n\n\
             [[account]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n"
        );
        std::fs::write(dir.path().join("letterbox.toml"), &config).unwrap();
        let plan = letterbox::mail::plan::MailPlan::from(
            &letterbox::config::parse("letterbox.toml", &config).unwrap(),
        );
        let agent = common::start_mail_agent(&server, dir.path(), &common::built_mail_image());
        let lab = Lab {
            server,
            dir,
            _pebble: pebble,
            agent: Some(agent),
            box_v4: plan.boxes[0].ipv4.to_string(),
        };
        let up = common::wait_until(START_LIMIT, || {
            ["front-postfix", "front-dovecot", "box-alice", "acme"]
                .iter()
                .all(|unit| {
                    common::unit_line(&lab.socket(), unit).is_some_and(|l| l.contains("running"))
                })
        });
        assert!(up, "the mail units never ran:\n{}", lab.diagnostics());
        lab
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn installs(&self) -> usize {
        self.agent_log()
            .matches("ACME: installed a certificate")
            .count()
    }

    /// The SHA-256 of the certificate installed in STATE/tls, as hex.
    fn installed(&self) -> String {
        fingerprint_of(&std::fs::read_to_string(self.state().join("tls/cert.pem")).unwrap())
    }

    /// Waits until the front's 993 and 465 and the box's 993 serve, verified against
    /// `root`, the certificate whose fingerprint is `wanted`.
    fn wait_served(&self, root: &Path, wanted: &str) {
        for (host, port) in [(SERVER_V4, 993), (SERVER_V4, 465), (&*self.box_v4, 993)] {
            let mut last = String::new();
            let served = common::wait_until(TIMEOUT, || {
                let (ok, fingerprint, transcript) = self.served(host, port, root, FQDN);
                last = transcript;
                ok && fingerprint == wanted
            });
            assert!(
                served,
                "{host}:{port} never served the installed certificate {wanted}:\n{last}\n{}",
                self.diagnostics()
            );
        }
    }

    fn diagnostics(&self) -> String {
        let mut out = format!(
            "units:\n{}\n",
            common::ctl(&self.socket(), &["units"]).unwrap_or_default()
        );
        for file in ["front/front-postfix.log", "front/front-dovecot.log"] {
            let text = std::fs::read_to_string(self.state().join(file)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out += &format!(
                "{file}:\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let pebble =
            std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default();
        out + &format!("pebble:\n{pebble}\nagent log:\n{}", self.agent_log())
    }

    /// Pebble's root, which signs what it issues.
    fn pebble_root(&self) -> PathBuf {
        let out = self
            .server
            .exec(PYTHON)
            .args(["-c", FETCH, "https://127.0.0.1:15000/roots/0"])
            .arg(self.state().join("pebble-ca.pem"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = self.dir.path().join("pebble-root.pem");
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }

    /// What `openssl s_client` makes of the certificate served on `host`:`port` (implicit
    /// TLS), checked against `root` for `name`: (verified, the leaf's SHA-256, the
    /// transcript).
    fn served(&self, host: &str, port: u16, root: &Path, name: &str) -> (bool, String, String) {
        let out = self
            .server
            .exec("openssl")
            .args(["s_client", "-connect", &format!("{host}:{port}")])
            .args(["-servername", name, "-verify_hostname", name])
            .args(["-verify_return_error", "-CAfile"])
            .arg(root)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let transcript = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let verified = out.status.success() && transcript.contains("Verify return code: 0 (ok)");
        (verified, fingerprint_of(&transcript), transcript)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.agent.take());
        common::clear_containerd_leftovers(
            &self.state().join("containerd/containerd.sock"),
            self.dir.path(),
        );
    }
}

/// SHA-256 of the first certificate in an s_client transcript, as hex.
fn fingerprint_of(transcript: &str) -> String {
    let Some(start) = transcript.find("-----BEGIN CERTIFICATE-----") else {
        return String::new();
    };
    let end = transcript[start..]
        .find("-----END CERTIFICATE-----")
        .map_or(transcript.len(), |e| start + e);
    let body: String = transcript[start + 27..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = data_encoding::BASE64
        .decode(body.as_bytes())
        .unwrap_or_default();
    data_encoding::HEXLOWER.encode(&sha2_256(&der))
}

fn sha2_256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// Pebble on 127.0.0.1:14000 (ACME) and :15000 (management) in `netns`, with an HTTPS
/// certificate signed by a CA written to `ca_out` (what `acme_ca_file` names), asking the
/// agent's DNS server for DNS-01.
fn start_pebble(netns: &Netns, dir: &Path, ca_out: &Path) -> KillOnDrop {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "letterbox test pebble HTTPS CA");
    let issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(ca_out, issuer.as_ref().pem()).unwrap();
    std::fs::write(dir.join("pebble-cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).unwrap();
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": "127.0.0.1:14000",
            "managementListenAddress": "127.0.0.1:15000",
            "certificate": dir.join("pebble-cert.pem"),
            "privateKey": dir.join("pebble-key.pem"),
            "httpPort": 5002,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": VALIDITY_SECONDS,
        }
    });
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
    let child = netns
        .exec("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("{SERVER_V4}:53")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pebble = KillOnDrop(child);
    let listening = common::wait_until(TIMEOUT, || {
        std::fs::read_to_string(dir.join("pebble.log"))
            .is_ok_and(|l| l.contains("Listening on: 127.0.0.1:14000"))
    });
    assert!(
        listening,
        "pebble never listened:\n{}",
        std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
    );
    pebble
}

#[test]
fn acme_certificate_from_pebble_over_dns01_is_served_on_993_and_465_and_renewed_without_dropping_a_session(
) {
    let test = "acme_certificate_from_pebble_over_dns01_is_served_on_993_and_465_and_renewed_without_dropping_a_session";
    if !can_run(test) {
        return;
    }
    let lab = Lab::start();
    let issued = common::wait_until(ISSUE_LIMIT, || lab.installs() >= 1);
    assert!(
        issued,
        "no certificate was installed:\n{}",
        lab.diagnostics()
    );
    let root = lab.pebble_root();

    // Served on both implicit-TLS ports, chained to pebble's root, for the host's name.
    let first = lab.installed();
    assert!(!first.is_empty());
    lab.wait_served(&root, &first);
    // One certificate for the webmail's name too (`mail.example.org` is the host's).
    let (verified, _, transcript) = lab.served(SERVER_V4, 993, &root, "example.org");
    assert!(verified, "not valid for example.org:\n{transcript}");
    // The key and account are the device's own, root's only.
    for file in ["tls/key.pem", "tls/cert.pem", "acme/account.json"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(lab.state().join(file))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // The challenge answer left the zone once the CA had looked.
    assert!(!lab.state().join("acme/challenge").exists());

    // An SMTP session on 465 and an IMAP session on 993, opened before the renewal:
    // Postfix's master reloads on SIGHUP while its smtpd finishes the session it serves;
    // the agent ends IMAP's TLS, and its open sessions keep theirs.
    let go = lab.dir.path().join("go");
    let (mut smtp, mut smtp_out) = lab.session(465, &go);
    let (mut imap, mut imap_out) = lab.session(993, &go);
    for (what, out) in [("SMTP", &mut smtp_out), ("IMAP", &mut imap_out)] {
        assert_eq!(
            out.line(),
            first,
            "the {what} session saw the issued certificate"
        );
    }
    assert_eq!(
        lab.installs(),
        1,
        "renewed before the sessions were open: the test proves nothing:\n{}",
        lab.diagnostics()
    );

    let renewed = common::wait_until(RENEW_LIMIT, || lab.installs() >= 2);
    assert!(
        renewed,
        "the certificate was never renewed:\n{}",
        lab.diagnostics()
    );
    let renewal = lab.installed();
    assert_ne!(renewal, first, "the renewal installed the same certificate");
    lab.wait_served(&root, &renewal);
    // Idle for longer than a Dovecot reload lets a proxied IMAP session live (2 s).
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&go, "").unwrap();
    for (what, out) in [("SMTP", &mut smtp_out), ("IMAP", &mut imap_out)] {
        assert_eq!(
            out.line(),
            "still open",
            "the {what} session opened before the renewal:\n{}",
            lab.diagnostics()
        );
    }
    assert!(smtp.wait().unwrap().success());
    assert!(imap.wait().unwrap().success());
    // A new IMAP session gets the renewed certificate.
    std::fs::remove_file(&go).unwrap();
    let (mut imap, mut imap_out) = lab.session(993, &go);
    assert_eq!(
        imap_out.line(),
        renewal,
        "IMAP serves the renewed certificate"
    );
    std::fs::write(&go, "").unwrap();
    assert_eq!(imap_out.line(), "still open");
    assert!(imap.wait().unwrap().success());
    assert_eq!(
        lab.installs(),
        2,
        "a third certificate came while the renewal was checked:\n{}",
        lab.diagnostics()
    );
}

/// A session's output, a line at a time.
struct Lines(std::io::BufReader<std::process::ChildStdout>);

impl Lines {
    fn line(&mut self) -> String {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.0, &mut line).unwrap();
        line.trim().to_string()
    }
}

impl Lab {
    /// SESSION_ACROSS_RENEWAL on `port`, waiting for `go`.
    fn session(&self, port: u16, go: &Path) -> (KillOnDrop, Lines) {
        let mut child = self
            .server
            .exec(PYTHON)
            .args(["-u", "-c", SESSION_ACROSS_RENEWAL, SERVER_V4])
            .args([&port.to_string(), "alice", PASSWORD])
            .arg(go)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = Lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        (KillOnDrop(child), out)
    }
}

//! The webmail's test lab (tests/mail_webmail.rs): a server namespace running `letterbox
//! run` with the mail and webmail images, a client namespace linked to it, and the client's
//! tools (swaks, imaplib, curl) pointed at it.

use std::path::PathBuf;
use std::time::Duration;

use super::{KillOnDrop, Netns};

/// One agent at a time: two would clash on the containers' cgroups.
pub static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub const START_LIMIT: Duration = Duration::from_secs(180);
pub const DELIVERY_LIMIT: Duration = Duration::from_secs(60);
pub const PASSWORD: &str = "correct horse battery";
pub const SERVER_V4: &str = "192.0.2.10";
pub const CLIENT_V4: &str = "192.0.2.20";
pub const ALICE: &str = "box@alice.example.org";
pub const BOB: &str = "box@bob.example.org";

/// Logs in over IMAP (993) and prints each INBOX message, raw, as a JSON list of strings.
/// Arguments: host user password.
pub const IMAP_MESSAGES: &str = r#"
import imaplib, json, ssl, sys
host, user, password = sys.argv[1:4]
tls = ssl.create_default_context()
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
imap = imaplib.IMAP4_SSL(host, 993, ssl_context=tls, timeout=10)
imap.login(user, password)
imap.select("INBOX", readonly=True)
messages = []
for num in imap.search(None, "ALL")[1][0].split():
    messages.append(imap.fetch(num, "(RFC822)")[1][0][1].decode("utf-8", "replace"))
imap.logout()
print(json.dumps(messages))
"#;

/// Prints the first line a server greets with. Arguments: host port tls|plain.
const GREETING: &str = r#"
import socket, ssl, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port), timeout=10)
if mode == "tls":
    sock = ssl._create_unverified_context().wrap_socket(sock)
print(sock.makefile("rb").readline().decode().strip())
"#;

pub fn can_run(test: &str) -> bool {
    if !super::mail_parts_present(test, &["nsenter", "swaks", super::PYTHON], true) {
        return false;
    }
    let image = super::built_webmail_image();
    if !image.join("index.json").is_file() {
        let why = format!(
            "no webmail image at {} (make webmail-image builds it)",
            image.display()
        );
        super::skip(test, &why);
        return false;
    }
    true
}

/// The webmail's two names, as the client's browser resolves them.
pub const WEB_HOSTS: [(&str, &str); 2] =
    [("mail.example.org", SERVER_V4), ("example.org", SERVER_V4)];
pub const WEBMAIL: &str = "https://mail.example.org/";
/// How long Roundcube may take to answer a click (PHP starts its workers on demand).
pub const PAGE_LIMIT: Duration = Duration::from_secs(30);

pub struct Lab {
    _server: Netns,
    pub client: Netns,
    pub dir: tempfile::TempDir,
    agent: Option<KillOnDrop>,
}

impl Lab {
    /// The server namespace linked to the client's; alice and bob in the file; the agent
    /// started with the webmail image, and every unit up: the webmail's included when
    /// `webmail` (else the file says `[webmail] enabled = false`).
    pub fn start(webmail: bool) -> Lab {
        let (server, link) = Netns::with_veth("web");
        let client = Netns::new("webc");
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
             [[account]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n\n\
             [[account]]\nname = \"bob\"\npassword_hash = \"{hash}\"\n\n\
             [[account]]\nname = \"webmail\"\npassword_hash = \"{hash}\"\n\n\
             [webmail]\nenabled = {webmail}\n"
        );
        std::fs::write(dir.path().join("letterbox.toml"), &config).unwrap();
        let agent = super::start_mail_agent_with_webmail(
            &server,
            dir.path(),
            &super::built_mail_image(),
            Some(&super::built_webmail_image()),
        );
        let lab = Lab {
            _server: server,
            client,
            dir,
            agent: Some(agent),
        };
        let mut units = vec![
            "front-postfix",
            "front-dovecot",
            "box-alice",
            "box-bob",
            "box-webmail",
        ];
        units.extend(webmail.then_some("webmail"));
        let up = super::wait_until(START_LIMIT, || {
            units.iter().all(|unit| {
                super::unit_line(&lab.socket(), unit).is_some_and(|l| l.contains("running"))
            })
        });
        assert!(up, "the units never ran:\n{}", lab.diagnostics());
        let port_25 = super::wait_until(START_LIMIT, || {
            lab.client
                .exec("swaks")
                .args([
                    "--server",
                    SERVER_V4,
                    "--port",
                    "25",
                    "--quit-after",
                    "EHLO",
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(port_25, "port 25 never answered:\n{}", lab.diagnostics());
        if !webmail {
            return lab;
        }
        let answering = super::wait_until(START_LIMIT, || {
            lab.client
                .exec("curl")
                .args(["-ks", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("https://{SERVER_V4}/"))
                .output()
                .is_ok_and(|o| o.stdout == b"200")
        });
        assert!(answering, "443 never answered 200:\n{}", lab.diagnostics());
        lab
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    pub fn diagnostics(&self) -> String {
        let mut out = format!(
            "units:\n{}\n",
            super::ctl(&self.socket(), &["units"]).unwrap_or_default()
        );
        for file in [
            "webmail/webmail-nginx.log",
            "webmail/webmail-php.log",
            "front/front-postfix.log",
            "front/front-dovecot.log",
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
            std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
        )
    }

    /// swaks from the client namespace to the server's port 25.
    pub fn send(&self, from: &str, to: &str, subject: &str, body: &str) {
        let out = self
            .client
            .exec("swaks")
            .args(["--server", SERVER_V4, "--port", "25", "--timeout", "15"])
            .args(["--helo", "client.example.net", "--from", from, "--to", to])
            .args(["--header", &format!("Subject: {subject}"), "--body", body])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "swaks: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// The raw messages in `user`'s INBOX, read over IMAP from the client namespace.
    pub fn inbox(&self, user: &str) -> Vec<String> {
        let out = self
            .client
            .exec(super::PYTHON)
            .args(["-c", IMAP_MESSAGES, SERVER_V4, user, PASSWORD])
            .output()
            .unwrap();
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// curl from the client namespace with `args`: its `-w` output, and its exit code.
    pub fn curl(&self, args: &[&str]) -> (String, Option<i32>) {
        let out = self
            .client
            .exec("curl")
            .args(["-s", "--max-time", "15", "-o", "/dev/null"])
            .args(args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into(),
            out.status.code(),
        )
    }

    /// curl from the client namespace to the webmail's `query` as the session of
    /// `cookies`, its TLS not checked (see the certificate test for that).
    fn session_curl(&self, cookies: &[(String, String)], query: &str) -> std::process::Command {
        let header: Vec<String> = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let mut curl = self.client.exec("curl");
        curl.args(["-s", "-k", "--max-time", "30"])
            .args(["--resolve", &format!("mail.example.org:443:{SERVER_V4}")])
            .args(["-b", &header.join("; ")])
            .arg(format!("{WEBMAIL}{query}"));
        curl
    }

    /// The webmail's page at `query` as curl gets it with `cookies`.
    pub fn page_with(&self, cookies: &[(String, String)], query: &str) -> String {
        let out = self.session_curl(cookies, query).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The HTTP status of a POST to the webmail's `query` with `cookies`, its body given by
    /// curl's `body` arguments (`--data` or `-F`), and the CSRF token in Roundcube's header
    /// when given.
    pub fn post_with(
        &self,
        cookies: &[(String, String)],
        query: &str,
        body: &[&str],
        token: Option<&str>,
    ) -> u16 {
        let mut curl = self.session_curl(cookies, query);
        curl.args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(body);
        if let Some(token) = token {
            curl.args(["-H", &format!("X-Roundcube-Request: {token}")]);
        }
        let out = curl.output().unwrap();
        String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
    }

    /// The ids of the containers in the agent's containerd.
    pub fn containers(&self) -> Vec<String> {
        let ctr = super::trixie_containerd().join("root/usr/bin/ctr");
        let socket = self.state().join("containerd/containerd.sock");
        let out = super::run_ok(
            std::process::Command::new(ctr)
                .arg("--address")
                .arg(socket)
                .args(["-n", "letterbox", "containers", "list", "-q"]),
        );
        out.lines().map(str::to_string).collect()
    }

    /// `name`'s box's IPv4 address, as its namespace has it.
    pub fn box_ipv4(&self, name: &str) -> String {
        let netns = self.state().join("netns").join(name);
        let out = super::run_ok(
            std::process::Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"]),
        );
        let cidr = out
            .split_whitespace()
            .nth(3)
            .expect("ip -o addr's fourth field");
        cidr.split('/').next().unwrap().to_string()
    }

    /// The first line a server at `address` (TLS from the start when `tls`) greets a client
    /// with, inside the webmail's namespace; None when it cannot be reached.
    pub fn webmail_greeting(&self, address: &str, tls: bool) -> Option<String> {
        let (host, port) = address.rsplit_once(':').unwrap();
        let out = self
            .in_webmail_namespace(super::PYTHON)
            .args([
                "-c",
                GREETING,
                host,
                port,
                if tls { "tls" } else { "plain" },
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A command run in the webmail's network namespace.
    pub fn in_webmail_namespace(&self, program: &str) -> std::process::Command {
        let netns = self.state().join("netns/_webmail");
        let mut command = std::process::Command::new("nsenter");
        command
            .arg(format!("--net={}", netns.display()))
            .args(["--", program]);
        command
    }

    /// Whether a TCP connection to `address` succeeds from inside the webmail's namespace.
    pub fn webmail_reaches(&self, address: &str) -> bool {
        self.in_webmail_namespace("timeout")
            .args(["5", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{}", address.replace(':', "/")))
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.agent.take());
        super::clear_containerd_leftovers(
            &self.state().join("containerd/containerd.sock"),
            self.dir.path(),
        );
    }
}

//! The webmail under `letterbox run`, with trixie's containerd and runc and the amd64
//! `letterbox-mail` and `letterbox-webmail` images, driven by Debian's headless Chromium over
//! WebDriver (chromedriver) from a client namespace: Roundcube, through the agent's
//! forwarders, on the front's IMAP and submission. One agent serves every check: its start
//! is most of the wall time.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::browser::Browser;
use common::{KillOnDrop, Netns};

/// One agent at a time: two would clash on the containers' cgroups.
static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const START_LIMIT: Duration = Duration::from_secs(180);
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "correct horse battery";
const SERVER_V4: &str = "192.0.2.10";
const CLIENT_V4: &str = "192.0.2.20";
const ALICE: &str = "box@alice.example.org";
const BOB: &str = "box@bob.example.org";

/// Logs in over IMAP (993) and prints each INBOX message, raw, as a JSON list of strings.
/// Arguments: host user password.
const IMAP_MESSAGES: &str = r#"
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

fn can_run(test: &str) -> bool {
    if !common::mail_parts_present(test, &["nsenter", "swaks", common::PYTHON], true) {
        return false;
    }
    let image = common::built_webmail_image();
    if !image.join("index.json").is_file() {
        let why = format!(
            "no webmail image at {} (make webmail-image builds it)",
            image.display()
        );
        common::skip(test, &why);
        return false;
    }
    true
}

/// The webmail's two names, as the client's browser resolves them.
const WEB_HOSTS: [(&str, &str); 2] = [("mail.example.org", SERVER_V4), ("example.org", SERVER_V4)];
const WEBMAIL: &str = "https://mail.example.org/";
/// How long Roundcube may take to answer a click (PHP starts its workers on demand).
const PAGE_LIMIT: Duration = Duration::from_secs(30);

struct Lab {
    _server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
    agent: Option<KillOnDrop>,
}

impl Lab {
    /// The server namespace linked to the client's; alice and bob in the file; the agent
    /// started with the webmail image, and every unit up: the webmail's included when
    /// `webmail` (else the file says `[webmail] enabled = false`).
    fn start(webmail: bool) -> Lab {
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
             [webmail]\nenabled = {webmail}\n"
        );
        std::fs::write(dir.path().join("letterbox.toml"), &config).unwrap();
        let agent = common::start_mail_agent_with_webmail(
            &server,
            dir.path(),
            &common::built_mail_image(),
            Some(&common::built_webmail_image()),
        );
        let lab = Lab {
            _server: server,
            client,
            dir,
            agent: Some(agent),
        };
        let mut units = vec!["front-postfix", "front-dovecot", "box-alice", "box-bob"];
        units.extend(webmail.then_some("webmail"));
        let up = common::wait_until(START_LIMIT, || {
            units.iter().all(|unit| {
                common::unit_line(&lab.socket(), unit).is_some_and(|l| l.contains("running"))
            })
        });
        assert!(up, "the units never ran:\n{}", lab.diagnostics());
        let port_25 = common::wait_until(START_LIMIT, || {
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
        let answering = common::wait_until(START_LIMIT, || {
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

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn diagnostics(&self) -> String {
        let mut out = format!(
            "units:\n{}\n",
            common::ctl(&self.socket(), &["units"]).unwrap_or_default()
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
    fn send(&self, from: &str, to: &str, subject: &str, body: &str) {
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
    fn inbox(&self, user: &str) -> Vec<String> {
        let out = self
            .client
            .exec(common::PYTHON)
            .args(["-c", IMAP_MESSAGES, SERVER_V4, user, PASSWORD])
            .output()
            .unwrap();
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// curl from the client namespace with `args`: its `-w` output, and its exit code.
    fn curl(&self, args: &[&str]) -> (String, Option<i32>) {
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

    /// The webmail's inbox page as curl gets it from the client namespace with `cookies`.
    fn page_with(&self, cookies: &[(String, String)]) -> String {
        let header: Vec<String> = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let out = self
            .client
            .exec("curl")
            .args(["-s", "-k", "--max-time", "30"])
            .args(["--resolve", &format!("mail.example.org:443:{SERVER_V4}")])
            .args(["-b", &header.join("; ")])
            .arg(format!("{WEBMAIL}?_task=mail"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The HTTP status of a POST of `form` to the webmail's `query` with `cookies`, and
    /// the CSRF token in Roundcube's header when given.
    fn post_with(
        &self,
        cookies: &[(String, String)],
        query: &str,
        form: &str,
        token: Option<&str>,
    ) -> u16 {
        let header: Vec<String> = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let mut curl = self.client.exec("curl");
        curl.args(["-s", "-k", "--max-time", "30", "-o", "/dev/null"])
            .args(["-w", "%{http_code}"])
            .args(["--resolve", &format!("mail.example.org:443:{SERVER_V4}")])
            .args(["-b", &header.join("; "), "--data", form]);
        if let Some(token) = token {
            curl.args(["-H", &format!("X-Roundcube-Request: {token}")]);
        }
        let out = curl.arg(format!("{WEBMAIL}{query}")).output().unwrap();
        String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
    }

    /// The ids of the containers in the agent's containerd.
    fn containers(&self) -> Vec<String> {
        let ctr = common::trixie_containerd().join("root/usr/bin/ctr");
        let socket = self.state().join("containerd/containerd.sock");
        let out = common::run_ok(
            std::process::Command::new(ctr)
                .arg("--address")
                .arg(socket)
                .args(["-n", "letterbox", "containers", "list", "-q"]),
        );
        out.lines().map(str::to_string).collect()
    }

    /// `name`'s box's IPv4 address, as its namespace has it.
    fn box_ipv4(&self, name: &str) -> String {
        let netns = self.state().join("netns").join(name);
        let out = common::run_ok(
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

    /// Whether a TCP connection to `address` succeeds from inside the webmail's namespace.
    fn webmail_reaches(&self, address: &str) -> bool {
        let netns = self.state().join("netns/webmail");
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "timeout", "5", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{}", address.replace(':', "/")))
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
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

#[test]
fn the_webmail_reaches_only_the_fronts_imap_and_submission_and_serves_https_at_both_names() {
    let test =
        "the_webmail_reaches_only_the_fronts_imap_and_submission_and_serves_https_at_both_names";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(true);
    // Out of its namespace: the front's IMAP (993) and submission (587), nothing else.
    for allowed in ["127.0.0.1:993", "127.0.0.1:587"] {
        assert!(lab.webmail_reaches(allowed), "{allowed} unreachable");
    }
    let box_alice = format!("{}:24", lab.box_ipv4("alice"));
    for refused in [
        "127.0.0.1:25",
        "127.0.0.1:143",
        "127.0.0.1:465",
        &box_alice,
        "10.88.0.1:993",
        &format!("{SERVER_V4}:993"),
        &format!("{CLIENT_V4}:22"),
    ] {
        assert!(
            !lab.webmail_reaches(refused),
            "the webmail reached {refused}"
        );
    }
    // HTTPS at both of the webmail's names, with a certificate for each: curl checks it
    // against the appliance's own (self-signed) certificate.
    let cert = lab.state().join("tls/cert.pem");
    for name in ["mail.example.org", "example.org"] {
        let page = lab.curl(&[
            "-w",
            "%{http_code}",
            "--cacert",
            &cert.display().to_string(),
            "--resolve",
            &format!("{name}:443:{SERVER_V4}"),
            &format!("https://{name}/"),
        ]);
        assert_eq!(page, ("200".into(), Some(0)), "https://{name}/");
    }
    // Port 80 only redirects to HTTPS, on the name asked for.
    let redirect = lab.curl(&[
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: mail.example.org",
        &format!("http://{SERVER_V4}/?_task=mail"),
    ]);
    assert_eq!(
        redirect,
        ("301 https://mail.example.org/?_task=mail".into(), Some(0))
    );
}

#[test]
fn a_disabled_webmail_runs_no_container_and_nothing_listens_on_443_or_80() {
    let test = "a_disabled_webmail_runs_no_container_and_nothing_listens_on_443_or_80";
    if !can_run(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(false);
    assert_eq!(common::unit_line(&lab.socket(), "webmail"), None);
    let mail = ["box-alice", "box-bob", "front-dovecot", "front-postfix"];
    let started = common::wait_until(START_LIMIT, || {
        let running = lab.containers();
        mail.iter().all(|id| running.iter().any(|r| r == id))
    });
    assert!(
        started,
        "the mail containers never ran:\n{}",
        lab.diagnostics()
    );
    let mut containers = lab.containers();
    containers.sort();
    assert_eq!(containers, mail);
    // curl's exit code 7: the connection was refused.
    for url in [
        format!("https://{SERVER_V4}/"),
        format!("http://{SERVER_V4}/"),
    ] {
        assert_eq!(lab.curl(&[&url]).1, Some(7), "{url} answered");
    }
}

#[test]
fn in_chromium_alice_reads_her_mail_and_sends_dkim_signed_mail_and_a_wrong_password_a_forged_cookie_no_csrf_token_a_large_upload_and_a_logged_out_session_are_refused(
) {
    let test = "in_chromium_alice_reads_her_mail_and_sends_dkim_signed_mail_and_a_wrong_password_a_forged_cookie_no_csrf_token_a_large_upload_and_a_logged_out_session_are_refused";
    if !can_run(test) || !common::browser::present(test) {
        return;
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::start(true);
    let body = "This body is shown by the webmail.";
    lab.send("someone@example.net", ALICE, "Hello from swaks", body);
    let arrived = common::wait_until(DELIVERY_LIMIT, || {
        lab.inbox(ALICE)
            .iter()
            .any(|m| m.contains("Hello from swaks"))
    });
    assert!(
        arrived,
        "swaks's message never reached alice:\n{}",
        lab.diagnostics()
    );
    let browser = Browser::start(Some(&lab.client), &WEB_HOSTS).unwrap();

    // A wrong password: Roundcube's error, the login form again, no session.
    browser.goto(WEBMAIL).unwrap();
    log_in(&browser, "alice", "not her password");
    let error = browser.wait_for("#messagestack", PAGE_LIMIT).unwrap();
    assert!(error.contains("Login failed"), "{error}");
    browser.wait_for("#rcmloginuser", PAGE_LIMIT).unwrap();
    assert_eq!(
        session_auth(&browser),
        None,
        "a session after a wrong password"
    );

    // alice's own password: her inbox, with swaks's message, and its body.
    log_in(&browser, "alice", PASSWORD);
    let list = browser
        .wait_for("#messagelist tbody tr", PAGE_LIMIT)
        .unwrap();
    assert!(list.contains("Hello from swaks"), "the inbox: {list}");
    let shot = browser.screenshot("webmail-inbox").unwrap();
    eprintln!("the inbox, for a person to look at: {}", shot.display());
    let uid = first_uid(&browser.page_source().unwrap()).expect("a message row's uid");
    browser
        .goto(&format!(
            "{WEBMAIL}?_task=mail&_action=show&_mbox=INBOX&_uid={uid}"
        ))
        .unwrap();
    let shown = browser.wait_for("#messagebody", PAGE_LIMIT).unwrap();
    assert!(shown.contains(body), "the message's body: {shown}");

    // A message to bob, sent from the webmail: in bob's box, from alice, DKIM-signed. An
    // attachment above the upload limit is refused first, with a message that says so.
    browser
        .goto(&format!("{WEBMAIL}?_task=mail&_action=compose"))
        .unwrap();
    let large = lab.dir.path().join("eight-megabytes.bin");
    std::fs::write(&large, vec![b'x'; 8 << 20]).unwrap();
    browser.wait_for("#compose-subject", PAGE_LIMIT).unwrap();
    browser.choose_file("#uploadformInput", &large).unwrap();
    let too_large = "The uploaded file exceeds the maximum size of 7.0 MB.";
    let said = common::wait_until(PAGE_LIMIT, || {
        browser.page_text().is_ok_and(|t| t.contains(too_large))
    });
    assert!(
        said,
        "no \"{too_large}\":\n{}",
        browser.page_text().unwrap()
    );
    browser
        .fill("#compose_to .recipient-input input", &format!("{BOB}, "))
        .unwrap();
    browser
        .fill("#compose-subject", "Sent from the webmail")
        .unwrap();
    browser
        .fill("#composebody", "Hello bob, from Roundcube.")
        .unwrap();
    browser.click(".btn.send").unwrap();
    let delivered = common::wait_for(DELIVERY_LIMIT, || {
        lab.inbox(BOB)
            .into_iter()
            .find(|m| m.contains("Sent from the webmail"))
    })
    .unwrap_or_else(|| {
        panic!(
            "the webmail's message never reached bob:\n{}",
            lab.diagnostics()
        )
    });
    assert!(
        delivered.contains(&format!("From: {ALICE}")) || delivered.contains(&format!("<{ALICE}>")),
        "sent as alice: {delivered}"
    );
    let (verdicts, stderr) = common::dkim_verify(&lab.client, SERVER_V4, delivered.as_bytes());
    assert!(
        !verdicts.is_empty() && verdicts.iter().all(|v| v.ends_with("=ok")),
        "DKIM: {verdicts:?} {stderr}\n{delivered}"
    );

    // The session's cookies open alice's inbox to another client (curl); a forged session
    // id opens nothing, and after a logout the same cookies open nothing either.
    let cookies: Vec<(String, String)> = (browser.cookies().unwrap().iter())
        .filter(|c| c.name().starts_with("roundcube_"))
        .map(|c| (c.name().to_string(), c.value().to_string()))
        .collect();
    let inbox = lab.page_with(&cookies);
    assert!(
        inbox.contains("id=\"messagelist\""),
        "the session's cookies do not open the inbox: {cookies:?}"
    );
    // A request without the session's CSRF token is refused (403); with it, served.
    let token = request_token(&inbox).expect("the page's request_token");
    let mark = "?_task=mail&_action=mark&_remote=1";
    let form = "_uid=*&_flag=read&_mbox=INBOX";
    assert_eq!(lab.post_with(&cookies, mark, form, None), 403);
    assert_eq!(lab.post_with(&cookies, mark, form, Some(&token)), 200);
    let forged: Vec<(String, String)> = (cookies.iter())
        .map(|(name, value)| match name.as_str() {
            "roundcube_sessid" => (name.clone(), "0123456789abcdef0123456789abcdef".into()),
            _ => (name.clone(), value.clone()),
        })
        .collect();
    assert_ne!(forged, cookies);
    let page = lab.page_with(&forged);
    assert!(
        page.contains("rcmloginuser") && !page.contains("id=\"messagelist\""),
        "a forged session id opened: {page}"
    );
    browser.click("a.logout").unwrap();
    browser.wait_for("#rcmloginuser", PAGE_LIMIT).unwrap();
    let page = lab.page_with(&cookies);
    assert!(
        page.contains("rcmloginuser") && !page.contains("id=\"messagelist\""),
        "the logged-out session still opens the inbox: {page}"
    );
}

fn log_in(browser: &Browser, user: &str, password: &str) {
    browser.fill("#rcmloginuser", user).unwrap();
    browser.fill("#rcmloginpwd", password).unwrap();
    browser.click("#rcmloginsubmit").unwrap();
}

/// The value of Roundcube's login cookie, if the browser holds a live one.
fn session_auth(browser: &Browser) -> Option<String> {
    browser
        .cookies()
        .unwrap()
        .into_iter()
        .find(|c| c.name() == "roundcube_sessauth" && c.value() != "-del-")
        .map(|c| c.value().to_string())
}

/// The uid of the first message Roundcube's list links to (its subject's `href` has
/// `_uid=UID`).
fn first_uid(page: &str) -> Option<u32> {
    let list = &page[page.find("id=\"messagelist\"")?..];
    let start = list.find("_uid=")? + "_uid=".len();
    let digits: String = list[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The session's CSRF token, as Roundcube hands it to its scripts (`"request_token":"…"`).
fn request_token(page: &str) -> Option<String> {
    let start = page.find("\"request_token\":\"")? + "\"request_token\":\"".len();
    let token: String = page[start..].chars().take_while(|c| *c != '"').collect();
    (!token.is_empty()).then_some(token)
}

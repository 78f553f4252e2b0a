//! The browser harness (tests/common/browser.rs) against a real page: headless Chromium,
//! in a network namespace as the webmail tests run it, signs in through a form served by
//! Python's http.server.

mod common;

use std::io::BufRead;
use std::time::{Duration, Instant};

use common::browser::{self, Browser, Cookie};
use common::{KillOnDrop, Netns};

/// A sign-in form (alice / secret) that sets an HttpOnly session cookie and redirects to
/// /inbox, which names the signed-in user only for a session cookie it issued. Prints its
/// port.
const SIGN_IN_SERVER: &str = r#"
import http.cookies, http.server, secrets, urllib.parse
SESSIONS = {}
FORM = b"""<!doctype html><title>Sign in</title>
<form method=post action=/login><input id=user name=user>
<input id=password name=password type=password><button id=login>Sign in</button></form>"""
class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body, headers=()):
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/":
            return self.reply(200, FORM)
        cookie = http.cookies.SimpleCookie(self.headers.get("Cookie", "")).get("session")
        user = SESSIONS.get(cookie.value) if cookie else None
        if self.path == "/inbox" and user:
            self.reply(200, f"<p>Signed in as <b id=who>{user}</b></p>".encode())
        else:
            self.reply(403, b"<p id=refused>Not signed in</p>")
    def do_POST(self):
        length = int(self.headers["Content-Length"])
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        if form.get("user") == ["alice"] and form.get("password") == ["secret"]:
            token = secrets.token_hex(16)
            SESSIONS[token] = "alice"
            cookie = f"session={token}; HttpOnly; SameSite=Strict; Path=/"
            self.reply(303, b"", [("Location", "/inbox"), ("Set-Cookie", cookie)])
        else:
            self.reply(403, b"<p id=refused>Wrong password</p>")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// The sign-in server in `netns`, and its base URL.
fn start_sign_in_server(netns: &Netns) -> (KillOnDrop, String) {
    let mut server = KillOnDrop(
        netns
            .exec(common::PYTHON)
            .args(["-c", SIGN_IN_SERVER])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 starts"),
    );
    let mut port = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .expect("the server prints its port");
    assert!(
        !port.trim().is_empty(),
        "the sign-in server ended without a port"
    );
    (server, format!("http://127.0.0.1:{}", port.trim()))
}

#[test]
fn chromium_signs_in_through_a_form_keeps_the_httponly_session_cookie_and_a_forged_one_is_refused()
{
    let test = "chromium_signs_in_through_a_form_keeps_the_httponly_session_cookie_and_a_forged_one_is_refused";
    if !common::is_root() {
        return common::skip(test, "needs root (a network namespace)");
    }
    if !browser::present(test) {
        return;
    }
    let netns = Netns::new("brw");
    let (_server, base) = start_sign_in_server(&netns);

    let started = Instant::now();
    let browser = Browser::start(Some(&netns), &[]).unwrap();
    eprintln!("{test}: Chromium started in {:?}", started.elapsed());

    browser.goto(&format!("{base}/")).unwrap();
    browser.fill("#user", "alice").unwrap();
    browser.fill("#password", "secret").unwrap();
    browser.click("#login").unwrap();
    let who = browser.wait_for("#who", Duration::from_secs(10)).unwrap();
    assert_eq!(who, "alice", "{}", browser.page_text().unwrap());
    assert_eq!(browser.current_url().unwrap(), format!("{base}/inbox"));
    assert!(browser
        .page_source()
        .unwrap()
        .contains("<b id=\"who\">alice</b>"));

    // The server's token, as the browser stores it: HttpOnly (no script reads it).
    let cookies = browser.cookies().unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == "session")
        .unwrap_or_else(|| panic!("no session cookie among {cookies:?}"));
    assert_eq!(session.http_only(), Some(true), "{session:?}");
    assert!(
        session.value().len() == 32 && session.value().bytes().all(|b| b.is_ascii_hexdigit()),
        "{session:?}"
    );

    let path = browser.screenshot(test).unwrap();
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "{path:?}"
    );

    // A forged session replaces the real one (HttpOnly too: Chromium keeps an HttpOnly
    // cookie from being overwritten by one that is not): the inbox no longer names alice.
    let mut forged = Cookie::new("session", "0".repeat(32));
    forged.set_http_only(true);
    browser.add_cookie(forged).unwrap();
    let cookies = browser.cookies().unwrap();
    let sessions: Vec<&str> = cookies
        .iter()
        .filter(|c| c.name() == "session")
        .map(|c| c.value())
        .collect();
    assert_eq!(sessions, ["0".repeat(32)], "{cookies:?}");
    browser.goto(&format!("{base}/inbox")).unwrap();
    let refused = browser
        .wait_for("#refused", Duration::from_secs(10))
        .unwrap();
    assert_eq!(refused, "Not signed in");
    eprintln!("{test}: done in {:?}", started.elapsed());
}

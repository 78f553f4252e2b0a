//! The webmail under `letterbox run`, with trixie's containerd and runc and the amd64
//! `letterbox-mail` and `letterbox-webmail` images, driven by Debian's headless Chromium over
//! WebDriver (chromedriver) from a client namespace: Roundcube, through the agent's
//! forwarders, on the front's IMAP and submission. One agent serves every check: its start
//! is most of the wall time.

mod common;

use common::browser::Browser;
use common::webmail::*;
use std::os::unix::fs::MetadataExt;

/// The inbox's page, for a session's cookies.
const INBOX: &str = "?_task=mail";

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
    // (The lab waits for port 25 alone: the front's Dovecot may still be starting.)
    for (address, tls, greeting) in [
        ("127.0.0.1:993", true, "* OK"),
        ("127.0.0.1:587", false, "220 "),
    ] {
        let greeted = common::wait_until(START_LIMIT, || {
            lab.webmail_greeting(address, tls)
                .is_some_and(|g| g.starts_with(greeting))
        });
        assert!(
            greeted,
            "{address} never greeted the webmail:\n{}",
            lab.diagnostics()
        );
    }
    // Its namespace has loopback alone, even beside an account called `webmail` (whose
    // box's namespace is named after it).
    let links = common::run_ok(lab.in_webmail_namespace("ip").args(["-o", "link", "show"]));
    let names: Vec<&str> = (links.lines())
        .filter_map(|l| l.split(':').nth(1).map(str::trim))
        .collect();
    assert_eq!(names, ["lo"], "{links}");
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
    for name in ["mail.example.org", "example.org"] {
        let redirect = lab.curl(&[
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            &format!("Host: {name}"),
            &format!("http://{SERVER_V4}/?_task=mail"),
        ]);
        assert_eq!(
            redirect,
            (format!("301 https://{name}/?_task=mail"), Some(0))
        );
    }
    // Roundcube's two containers, beside the mail's.
    let containers = lab.containers();
    for webmail in ["webmail-nginx", "webmail-php"] {
        assert!(
            containers.iter().any(|c| c == webmail),
            "{webmail} is not running: {containers:?}"
        );
    }
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
    let mail = [
        "box-alice",
        "box-bob",
        "box-webmail",
        "front-dovecot",
        "front-postfix",
    ];
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
    // The session is in Roundcube's database, which is on the data partition beside the
    // des_key the agent made there: www-data's files, for it alone.
    for file in ["des_key", "roundcube.db"] {
        let path = lab.state().join("webmail/data").join(file);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            (meta.mode() & 0o777, meta.uid()),
            (0o600, letterbox::webmail::WWW_DATA_ID),
            "{}'s mode and owner",
            path.display()
        );
    }
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
    let large = lab.dir.path().join("nine-megabytes.bin");
    std::fs::write(&large, vec![b'x'; 9 << 20]).unwrap();
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
    // Roundcube ignores a command while it is busy (the refused upload's request, here).
    wait_idle(&browser);
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
    let inbox = lab.page_with(&cookies, INBOX);
    assert!(
        inbox.contains("id=\"messagelist\""),
        "the session's cookies do not open the inbox: {cookies:?}"
    );
    // A request without the session's CSRF token is refused (403); with it, served.
    let token = request_token(&inbox).expect("the page's request_token");
    let mark = "?_task=mail&_action=mark&_remote=1";
    let form = "_uid=*&_flag=read&_mbox=INBOX";
    let form = ["--data", form];
    assert_eq!(lab.post_with(&cookies, mark, &form, None), 403);
    assert_eq!(lab.post_with(&cookies, mark, &form, Some(&token)), 200);
    // alice has one identity, her own address, and cannot make it another: the front's
    // submission would refuse any other sender. The save goes through (the new name shows)
    // but keeps her address.
    let identities = "?_task=settings&_action=identities";
    let iid = identity_id(&lab.page_with(&cookies, identities)).expect("alice's identity");
    let name = "Alice Liddell";
    let other_sender = format!("_iid={iid}&_name={name}&_email={BOB}&_token={token}");
    let save = "?_task=settings&_action=save-identity";
    assert_eq!(
        lab.post_with(&cookies, save, &["--data", &other_sender], Some(&token)),
        200
    );
    let kept = lab.page_with(&cookies, identities);
    assert!(
        kept.contains(name) && kept.contains(ALICE) && !kept.contains(BOB),
        "alice's identities after a save as bob: {kept}"
    );
    // The upload limit holds on the server too, for a client without Roundcube's scripts:
    // nginx refuses the request (413) before PHP reads it.
    let upload = format!("_attachments[]=@{}", large.display());
    let query = "?_task=mail&_action=upload&_remote=1&_from=compose";
    let refused = lab.post_with(&cookies, query, &["-F", &upload], Some(&token));
    assert_eq!(refused, 413);
    let forged: Vec<(String, String)> = (cookies.iter())
        .map(|(name, value)| match name.as_str() {
            "roundcube_sessid" => (name.clone(), "0123456789abcdef0123456789abcdef".into()),
            _ => (name.clone(), value.clone()),
        })
        .collect();
    assert_ne!(forged, cookies);
    let page = lab.page_with(&forged, INBOX);
    assert!(
        page.contains("rcmloginuser") && !page.contains("id=\"messagelist\""),
        "a forged session id opened: {page}"
    );
    // Once its copy is in Sent, Roundcube leaves the compose page for the list: logging
    // out from the compose page would be cut short by that.
    let left = common::wait_until(PAGE_LIMIT, || {
        !browser.current_url().unwrap().contains("_action=compose")
    });
    assert!(left, "Roundcube never left the compose page after the send");
    browser.wait_for("#messagelist", PAGE_LIMIT).unwrap();
    wait_idle(&browser);
    browser.click("a.logout").unwrap();
    browser.wait_for("#rcmloginuser", PAGE_LIMIT).unwrap();
    let page = lab.page_with(&cookies, INBOX);
    assert!(
        page.contains("rcmloginuser") && !page.contains("id=\"messagelist\""),
        "the logged-out session still opens the inbox: {page}"
    );
}

/// Waits until Roundcube's scripts have loaded and no request of theirs is in flight
/// (`rcmail.busy`): until then, Roundcube ignores a click on a command.
fn wait_idle(browser: &Browser) {
    let script = "return typeof rcmail === 'object' && rcmail.busy === false;";
    let idle = common::wait_until(PAGE_LIMIT, || {
        browser.script(script).unwrap() == serde_json::Value::Bool(true)
    });
    assert!(
        idle,
        "Roundcube stayed busy on {}",
        browser.current_url().unwrap()
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
    number_after(&page[page.find("id=\"messagelist\"")?..], "_uid=")
}

/// The id of the first identity in Roundcube's list of them (its row is `rcmrowID`).
fn identity_id(page: &str) -> Option<u32> {
    number_after(page, "id=\"rcmrow")
}

/// The number right after the first `marker` in `text`.
fn number_after(text: &str, marker: &str) -> Option<u32> {
    let start = text.find(marker)? + marker.len();
    let digits: String = text[start..]
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

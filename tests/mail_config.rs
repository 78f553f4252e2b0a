//! The mail configuration rendered from a provisioning file with two accounts: every
//! file against its golden file under tests/golden/mail, and every file loaded, without
//! an error or a warning, by trixie's own Postfix 3.10 and Dovecot 2.4 (the amd64
//! letterbox-mail image, unpacked and run in a chroot).

mod common;

use std::path::Path;
use std::process::Output;

use common::mail_image::{chroot, unpacked_rootfs};
use letterbox::mail::{dovecot, paths, postfix, MailPlan, GENERATED};

/// Both hashes are of "letterbox": alice's SHA-512 crypt, bob's yescrypt.
const FIXTURE: &str = r#"version = 1
nameservers = ["192.0.2.53", "2001:db8::53"]
[system]
hostname = "mail"
domain = "example.org"
[[interface]]
name = "eth0"
ipv4 = ["192.0.2.10/24"]
gateway4 = "192.0.2.1"
ipv6 = ["2001:db8::10/64"]
gateway6 = "2001:db8::1"
[[account]]
name = "alice"
password_hash = "$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/"
[[account]]
name = "bob"
password_hash = "$y$j9T$l.4Kf7wcyQ20w/sxhEjQM0$NX6qsFMn96tMnY1br5GGM9L9SXp5CLU7qKRx8LB/14D"
"#;

fn plan() -> MailPlan {
    let config = letterbox::config::parse("fixture.toml", FIXTURE).expect("a valid fixture");
    MailPlan::from(&config)
}

/// The fixture with a smarthost on `port`.
fn plan_with_relayhost(port: u16) -> MailPlan {
    let text = format!(
        "{FIXTURE}[mail.relayhost]\nhost = \"smtp.isp.example\"\nport = {port}\n\
         username = \"me@isp.example\"\npassword_file = \"relayhost-password\"\n"
    );
    let config = letterbox::config::parse("fixture.toml", &text).expect("a valid fixture");
    MailPlan::from(&config)
}

#[test]
fn a_relayhost_sends_through_the_smarthost_logged_in_over_tls_only() {
    let starttls = plan_with_relayhost(587);
    letterbox::golden::check(
        "mail/front/postfix/main-relayhost.cf",
        &postfix::main_cf(&starttls),
    );
    let relay = starttls.relayhost.as_ref().unwrap();
    assert_eq!(
        postfix::relay_password(relay, "pa:ss word"),
        format!(
            "{GENERATED}# The smarthost's login: next hop, then username:password.\n\
                 [smtp.isp.example]:587 me@isp.example:pa:ss word\n"
        )
    );
    let tls = postfix::main_cf(&plan_with_relayhost(465));
    assert!(
        tls.contains("relayhost = [smtp.isp.example]:465\n")
            && tls.contains("smtp_tls_wrappermode = yes\n"),
        "{tls}"
    );
    assert!(!postfix::main_cf(&starttls).contains("smtp_tls_wrappermode"));
    assert!(!postfix::main_cf(&plan()).contains("relayhost"));
}

/// Every rendered file, named as its golden file under tests/golden/mail.
fn rendered(plan: &MailPlan) -> Vec<(String, String)> {
    let mut files = vec![
        ("front/postfix/main.cf".into(), postfix::main_cf(plan)),
        ("front/postfix/master.cf".into(), postfix::master_cf()),
        (
            "front/postfix/resolv.conf".into(),
            postfix::resolv_conf(plan),
        ),
        ("front/dovecot.conf".into(), dovecot::front_conf()),
    ];
    for (login, text) in dovecot::front_logins(plan) {
        files.push((format!("front/logins/{login}"), text));
    }
    for b in &plan.boxes {
        files.push((
            format!("box-{}/dovecot.conf", b.name),
            dovecot::box_conf(plan, b),
        ));
        files.push((format!("box-{}/passwd", b.name), dovecot::box_passwd(b)));
    }
    files
}

#[test]
fn every_rendered_file_matches_its_golden_file() {
    let plan = plan();
    assert_eq!(plan.boxes.len(), 2);
    for (name, text) in rendered(&plan) {
        letterbox::golden::check(&format!("mail/{name}"), &text);
    }
}

#[test]
fn every_rendered_file_says_it_is_generated_and_renders_the_same_twice() {
    let first = rendered(&plan());
    assert_eq!(first.len(), 12);
    for (name, text) in &first {
        assert!(text.starts_with(GENERATED), "{name} starts with:\n{text}");
    }
    assert_eq!(first, rendered(&plan()));
}

/// Writes `text` at `path` inside `root` (an absolute path of the container).
fn put(root: &Path, path: &str, text: &str) {
    let file = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, text).unwrap();
}

/// The command succeeded and said nothing on stderr: no error, no warning.
fn assert_clean(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{what}: {}\n{stderr}",
        out.status
    );
}

#[test]
fn trixies_postfix_loads_the_front_files_without_a_warning() {
    let test = "trixies_postfix_loads_the_front_files_without_a_warning";
    let Some((_dir, root)) = unpacked_rootfs(test) else {
        return;
    };
    let plan = plan();
    put(&root, "/etc/postfix/main.cf", &postfix::main_cf(&plan));
    put(&root, "/etc/postfix/master.cf", &postfix::master_cf());
    let postconf = chroot(&root, &["postconf", "-c", paths::POSTFIX_CONFIG, "-n"]);
    assert_clean("postconf -n", &postconf);
    let settings = String::from_utf8_lossy(&postconf.stdout);
    for expected in [
        "relay_domains = socketmap:unix:/run/letterbox/maps.sock:domains",
        "mynetworks = 127.0.0.0/8 [::1]/128",
        "allow_percent_hack = no",
    ] {
        assert!(
            settings.lines().any(|l| l == expected),
            "{expected}:\n{settings}"
        );
    }
    // The maps, asked by trixie's own socketmap client (postmap -q) of our socketmap
    // answers, route each domain to its own box, and know each box's one address.
    let served = serve_socketmap(
        &root.join("run/letterbox").join(paths::MAPS_SOCKET),
        plan.clone(),
    );
    let map = |name: &str| {
        let out = chroot(
            &root,
            &["postconf", "-c", paths::POSTFIX_CONFIG, "-h", name],
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (domains, transports, recipients) = (
        map("relay_domains"),
        map("transport_maps"),
        map("relay_recipient_maps"),
    );
    let query = |map: &str, key: &str| {
        let out = chroot(
            &root,
            &["postmap", "-c", paths::POSTFIX_CONFIG, "-q", key, map],
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (sender_logins, sender_access) = (
        map("smtpd_sender_login_maps"),
        map("smtpd_sender_restrictions").replace("check_sender_access ", ""),
    );
    for b in &plan.boxes {
        assert_eq!(
            query(&sender_logins, &b.address),
            format!("{} {}", b.address, b.name),
            "the logins that may send as {}",
            b.address
        );
        assert!(query(&sender_access, &b.address).starts_with("REJECT 5.7.1 "));
        assert_eq!(query(&sender_access, &b.mail_domain), "");
    }
    for b in &plan.boxes {
        let route = format!("lmtp:inet:[{}]:24", b.ipv4);
        assert_eq!(query(&domains, &b.mail_domain), b.mail_domain);
        assert_eq!(query(&transports, &b.address), route);
        assert_eq!(query(&recipients, &b.address), "ok");
        assert_eq!(
            query(&recipients, &format!("postmaster@{}", b.mail_domain)),
            ""
        );
    }
    assert_eq!(
        query(&domains, "example.org"),
        "example.org",
        "the bare domain is ours"
    );
    assert_eq!(
        query(&recipients, "postmaster@example.org"),
        "",
        "but no box's"
    );
    assert!(served.join().is_ok());
    let chroots = chroot(
        &root,
        &["postconf", "-c", paths::POSTFIX_CONFIG, "-F", "*/*/chroot"],
    );
    assert_clean("postconf -F", &chroots);
    let chroots = String::from_utf8_lossy(&chroots.stdout);
    assert!(
        chroots.lines().count() > 20 && chroots.lines().all(|l| l.ends_with("/chroot = n")),
        "{chroots}"
    );
    assert_clean(
        "postfix check",
        &chroot(&root, &["postfix", "-c", paths::POSTFIX_CONFIG, "check"]),
    );

    // With a smarthost: its login table, as trixie's postmap reads it.
    let relayhost = plan_with_relayhost(587);
    put(&root, "/etc/postfix/main.cf", &postfix::main_cf(&relayhost));
    let relay = relayhost.relayhost.as_ref().unwrap();
    put(
        &root,
        paths::RELAY_PASSWORD,
        &postfix::relay_password(relay, "s3cret"),
    );
    assert_clean(
        "postconf -n with a relayhost",
        &chroot(&root, &["postconf", "-c", paths::POSTFIX_CONFIG, "-n"]),
    );
    assert_clean(
        "postfix check with a relayhost",
        &chroot(&root, &["postfix", "-c", paths::POSTFIX_CONFIG, "check"]),
    );
    let login = chroot(
        &root,
        &[
            "postmap",
            "-q",
            "[smtp.isp.example]:587",
            &format!("texthash:{}", paths::RELAY_PASSWORD),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&login.stdout).trim(),
        "me@isp.example:s3cret"
    );
}

#[test]
fn trixies_dovecot_loads_the_front_and_box_files_without_a_warning() {
    let test = "trixies_dovecot_loads_the_front_and_box_files_without_a_warning";
    let Some((_dir, root)) = unpacked_rootfs(test) else {
        return;
    };
    let plan = plan();
    let mut configs = vec![("front".to_string(), dovecot::front_conf())];
    for b in &plan.boxes {
        configs.push((format!("box-{}", b.name), dovecot::box_conf(&plan, b)));
    }
    for (login, text) in dovecot::front_logins(&plan) {
        put(&root, &format!("{}/{login}", paths::DOVECOT_LOGINS), &text);
    }
    for (name, conf) in &configs {
        let path = format!("/etc/dovecot/{name}.conf");
        put(&root, &path, conf);
        let out = chroot(&root, &["doveconf", "-c", &path, "-n"]);
        assert_clean(&format!("doveconf -n of {name}"), &out);
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("passdb passwd-file {"), "{name}:\n{shown}");
    }
    // Both schemes verify with the {CRYPT} prefix the passwd-files give them.
    let front = "/etc/dovecot/front.conf";
    for b in &plan.boxes {
        let hash = format!("{{CRYPT}}{}", b.password_hash);
        let right = chroot(
            &root,
            &["doveadm", "-c", front, "pw", "-t", &hash, "-p", "letterbox"],
        );
        assert_clean(&format!("{}'s hash verifies", b.name), &right);
        let wrong = chroot(
            &root,
            &["doveadm", "-c", front, "pw", "-t", &hash, "-p", "wrong"],
        );
        assert!(
            !wrong.status.success(),
            "{}'s hash takes any password",
            b.name
        );
    }
}

/// Serves `plan`'s maps on `socket` with letterbox's socketmap answers, one connection at
/// a time, until no client has come for a second.
fn serve_socketmap(socket: &Path, plan: letterbox::mail::MailPlan) -> std::thread::JoinHandle<()> {
    use letterbox::mail::socketmap;
    use std::io::{Read, Write};
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut idle_since = std::time::Instant::now();
        while idle_since.elapsed() < std::time::Duration::from_secs(1) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                match socketmap::take_netstring(&mut buffer).unwrap() {
                    Some(request) => {
                        let reply = socketmap::answer(Some(&plan), &request);
                        stream.write_all(&socketmap::netstring(&reply)).unwrap();
                    }
                    None => match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    },
                }
            }
            idle_since = std::time::Instant::now();
        }
    })
}

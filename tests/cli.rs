//! `letterbox check` and `letterbox passwd` run as commands: the built binary, its exit
//! codes, what it prints, and the password read from a pipe.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// A real SHA-512 crypt hash of "letterbox".
const HASH: &str = "$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/";

fn good() -> String {
    format!(
        "version = 1\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\
         [[interface]]\nname = \"eth0\"\nipv4 = [\"192.0.2.10/24\"]\ngateway4 = \"192.0.2.1\"\n\
         [console]\nadmin_password_hash = \"{HASH}\"\n"
    )
}

/// Runs `letterbox ARGS` with `stdin` on a pipe (closed after it is written).
fn letterbox(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_letterbox"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("letterbox starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `letterbox check` on `text`, written to a file named letterbox.toml.
fn check(text: &str) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letterbox.toml");
    std::fs::write(&path, text).unwrap();
    let shown = path.display().to_string();
    (letterbox(&["check", &shown], ""), shown)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_a_good_file_with_exit_0() {
    let (out, _) = check(&good());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok: mail.example.org (1 interface)\n");
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn check_prints_every_error_of_a_broken_file_with_exit_1() {
    let broken = good()
        .replace("\"mail\"", "\"-mail\"")
        .replace("192.0.2.10/24", "192.0.2.10/33")
        .replace("[console]", "[console]\nbaud = 7");
    let (out, path) = check(&broken);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "", "nothing on stdout but success");
    let stderr = text(&out.stderr);
    for position in ["3:12", "7:9", "10:8"] {
        assert!(
            stderr.contains(&format!("{path}:{position}: error: ")),
            "{position} missing from:\n{stderr}"
        );
    }
    assert!(stderr.trim_end().ends_with("3 errors"), "{stderr}");
}

#[test]
fn check_without_a_file_checks_the_embedded_default() {
    let out = letterbox(&["check"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config = letterbox::config::parse("default", letterbox::config::DEFAULT_TOML).unwrap();
    assert_eq!(
        text(&out.stdout),
        format!(
            "ok: {} ({} interface{})\n",
            config.system.fqdn(),
            config.interfaces.len(),
            if config.interfaces.len() == 1 {
                ""
            } else {
                "s"
            }
        )
    );
}

#[test]
fn check_of_a_missing_file_says_so_with_exit_1() {
    let out = letterbox(&["check", "/nonexistent/letterbox.toml"], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot read provisioning file /nonexistent/letterbox.toml"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_a_hash_too_costly_for_a_login_at_its_position() {
    let costly = HASH.replacen("$6$", "$6$rounds=999999999$", 1);
    let (out, path) = check(&good().replace(HASH, &costly));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{path}:10:23: error: SHA-512 crypt hash with 999999999 rounds; expected at most 1000000")),
        "{stderr}"
    );
    assert!(stderr.contains("letterbox passwd"), "{stderr}");
}

#[test]
fn check_refuses_an_unknown_time_zone_at_its_position() {
    let file = good().replace(
        "domain = \"example.org\"\n",
        "domain = \"example.org\"\ntimezone = \"Mars/Olympus\"\n",
    );
    let (out, path) = check(&file);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{path}:5:12: error: unknown timezone \"Mars/Olympus\""
        )),
        "{stderr}"
    );
}

#[test]
fn check_never_prints_the_value_of_a_misspelt_password_key() {
    let file = good().replace(
        &format!("admin_password_hash = \"{HASH}\""),
        "admin_pasword_hash = \"correct horse battery\"",
    );
    let (out, path) = check(&file);
    assert_eq!(out.status.code(), Some(1));
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        shown.contains(&format!(
            "{path}:10:1: error: unknown field `admin_pasword_hash`"
        )),
        "{shown}"
    );
    assert!(!shown.contains("correct horse"), "{shown}");
    assert!(
        shown.contains("admin_pasword_hash = (not shown)"),
        "{shown}"
    );
}

#[test]
fn passwd_hashes_a_password_read_from_stdin() {
    let out = letterbox(&["passwd"], "correct horse\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let hash = stdout.strip_suffix('\n').expect("one line");
    assert!(!hash.contains('\n'), "{stdout:?}");
    assert!(letterbox::passwd::verify("correct horse", hash), "{hash}");
    assert!(
        !letterbox::passwd::verify("correct horse\n", hash),
        "{hash}"
    );
    letterbox::config::check_password_hash(hash).unwrap();
    // No prompt on a pipe: stdout is the hash alone, ready for the file.
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn passwd_refuses_an_empty_password() {
    for stdin in ["\n", ""] {
        let out = letterbox(&["passwd"], stdin);
        assert_eq!(out.status.code(), Some(1), "stdin {stdin:?}");
        assert_eq!(text(&out.stdout), "", "no hash for stdin {stdin:?}");
        assert_eq!(
            text(&out.stderr),
            "letterbox: empty password; expected at least one character\n"
        );
    }
}

#[test]
fn a_hash_from_passwd_is_accepted_by_check() {
    let out = letterbox(&["passwd"], "s3cret\n");
    let hash = text(&out.stdout).trim_end().to_string();
    let (out, _) = check(&good().replace(HASH, &hash));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

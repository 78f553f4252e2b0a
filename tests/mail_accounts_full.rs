//! `ctl account add` and `ctl account del` against a running agent whose data partition is
//! full: the state directory is an ext4 filesystem of its own (the appliance's data
//! partition's), loop-mounted, filled to its last block once the mail system runs. Not a
//! tmpfs: stopping a box there frees enough for a small archive. Both are refused with an
//! error naming the full filesystem and change nothing; once space is freed, the mail of
//! the existing accounts gets through again.
//!
//! Needs what tests/mail_e2e.rs needs: root, trixie's containerd and runc (`make
//! containerd-trixie`) and the mail image (`make mail-image`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{KillOnDrop, Netns, TIMEOUT};

/// A cold import of the image and the first start of the containers on a loaded machine.
const START_LIMIT: Duration = Duration::from_secs(120);
/// Mail deferred while the disk was full is tried again within the front's backoff.
const DELIVERY_LIMIT: Duration = Duration::from_secs(90);
const PASSWORD: &str = "correct horse battery";
const SERVER_V4: &str = "192.0.2.10";
const CLIENT_V4: &str = "192.0.2.20";

fn can_run(test: &str) -> bool {
    common::mail_parts_present(
        test,
        &["nsenter", "swaks", "dig", "fallocate", "mkfs.ext4"],
        true,
    )
}

struct Lab {
    server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
    agent: Option<KillOnDrop>,
}

impl Lab {
    /// alice and bob in the file, the state directory on an ext4 filesystem of its own,
    /// the agent started and every mail unit's container up.
    fn start() -> Lab {
        let (server, link) = Netns::with_veth("full");
        let client = Netns::new("fullc");
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
             [[account]]\nname = \"bob\"\npassword_hash = \"{hash}\"\n"
        );
        std::fs::write(dir.path().join("letterbox.toml"), config).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        // Sparse: blocks are taken only as written. Room for containerd's store.
        let data = dir.path().join("data.ext4");
        std::fs::File::create(&data)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let data = data.display().to_string();
        common::run(&["mkfs.ext4", "-q", "-F", &data]);
        common::run(&["mount", "-o", "loop", &data, &state.display().to_string()]);
        let mut lab = Lab {
            server,
            client,
            dir,
            agent: None,
        };
        lab.agent = Some(common::start_mail_agent(
            &lab.server,
            lab.dir.path(),
            &common::built_mail_image(),
        ));
        let up = common::wait_until(START_LIMIT, || {
            ["front-postfix", "front-dovecot", "box-alice", "box-bob"]
                .iter()
                .all(|unit| lab.started(unit))
        });
        assert!(
            up,
            "the mail containers never started:\n{}",
            lab.diagnostics()
        );
        let answering = common::wait_until(TIMEOUT, || {
            lab.swaks(&["--to", "box@alice.example.org", "--quit-after", "RCPT"])
                .status
                .success()
        });
        assert!(answering, "port 25 never answered:\n{}", lab.diagnostics());
        lab
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn file(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("letterbox.toml")).unwrap()
    }

    /// Whether `unit`'s container has started, by its log.
    fn started(&self, unit: &str) -> bool {
        let logs = common::ctl(&self.socket(), &["logs", unit, "-n", "200"]).unwrap_or_default();
        logs.contains(&format!("{unit} started (pid "))
    }

    fn units(&self) -> String {
        common::ctl(&self.socket(), &["units"]).unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        let mut out = format!("units:\n{}\n", self.units());
        for file in [
            "front/front-postfix.log",
            "boxes/alice/box.log",
            "boxes/bob/box.log",
        ] {
            let text = std::fs::read_to_string(self.state().join(file)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            out += &format!("{file}:\n{}\n", tail.join("\n"));
        }
        let agent_log = std::fs::read_to_string(self.dir.path().join("agent.log"));
        out + &format!("agent log:\n{}", agent_log.unwrap_or_default())
    }

    /// `letterbox ctl account ARGS`, with `password` on stdin when given; whether it
    /// succeeded, and its stdout and stderr.
    fn account(&self, args: &[&str], password: Option<&str>) -> (bool, String) {
        let mut child = std::process::Command::new(common::letterbox_bin())
            .arg("ctl")
            .arg("--socket")
            .arg(self.socket())
            .arg("account")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let input = password.map(|p| format!("{p}\n")).unwrap_or_default();
        let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes());
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn swaks(&self, args: &[&str]) -> std::process::Output {
        self.client
            .exec("swaks")
            .args(["--server", SERVER_V4, "--port", "25", "--timeout", "15"])
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

    /// The reply to RCPT TO:<to>, as swaks shows it (`<** 554 5.7.1 ...`).
    fn rcpt_reply(&self, to: &str) -> String {
        let out = self.swaks(&["--to", to, "--quit-after", "RCPT"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rcpt = text.find("RCPT TO").map(|i| &text[i..]).unwrap_or(&text);
        rcpt.lines()
            .find(|l| l.starts_with('<'))
            .unwrap_or_else(|| panic!("no reply to RCPT TO:<{to}>:\n{text}"))
            .to_string()
    }

    /// `dig +short NAME TYPE` from the client namespace.
    fn dig(&self, name: &str, rtype: &str) -> String {
        let out = self
            .client
            .exec("dig")
            .args(["+short", "+time=1", "+tries=2", &format!("@{SERVER_V4}")])
            .args([name, rtype])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Whether a message with `subject` is in `name`'s Maildir (new or cur).
    fn delivered(&self, name: &str, subject: &str) -> bool {
        let header = format!("Subject: {subject}");
        ["new", "cur"].iter().any(|dir| {
            let path = self.state().join(format!("mail/{name}/Maildir/{dir}"));
            std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .any(|entry| {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    text.lines()
                        .take_while(|l| !l.is_empty())
                        .any(|l| l == header)
                })
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.agent.take();
        let socket = self.state().join("containerd/containerd.sock");
        // The data partition is under the directory too: detached with the containers'
        // mounts (and its loop device with it).
        common::clear_containerd_leftovers(&socket, self.dir.path());
    }
}

/// Takes every free block of the filesystem at `dir`: a file as large as the space free
/// to all, then ones that take root's reserve and whatever was freed meanwhile. Asserts it
/// is full: a one-byte file cannot be written.
fn fill(dir: &Path) -> Vec<PathBuf> {
    let stat = nix::sys::statvfs::statvfs(dir).unwrap();
    let free = stat.blocks_available() * stat.fragment_size();
    let mut fillers = vec![dir.join("filler")];
    common::run(&[
        "fallocate",
        "-l",
        &free.to_string(),
        &fillers[0].display().to_string(),
    ]);
    let probe = dir.join("probe");
    for n in 0..5 {
        let tail = dir.join(format!("filler-tail-{n}"));
        let _ = std::process::Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", tail.display()))
            .arg("bs=4k")
            .arg("conv=fsync")
            .stderr(std::process::Stdio::null())
            .status();
        fillers.push(tail);
        if std::fs::write(&probe, b"x").is_err() {
            let _ = std::fs::remove_file(&probe);
            return fillers;
        }
        let _ = std::fs::remove_file(&probe);
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{} is not full", dir.display());
}

#[test]
fn on_a_full_data_partition_add_and_del_are_refused_naming_it_and_change_nothing() {
    let test = "on_a_full_data_partition_add_and_del_are_refused_naming_it_and_change_nothing";
    if !can_run(test) {
        return;
    }
    let lab = Lab::start();
    let state = lab.state();
    let file_before = lab.file();
    assert_eq!(lab.dig("bob.example.org", "MX"), "10 mail.example.org.");
    // More than what stopping his box frees (its container's state), so his archive
    // cannot find room: 4 MiB that do not compress, in mails of 1 MiB.
    let large = lab.dir.path().join("large");
    let mut subjects = Vec::new();
    for n in 0..4 {
        let mut random = vec![0u8; 1 << 20];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").unwrap(),
            &mut random,
        )
        .unwrap();
        std::fs::write(&large, random).unwrap();
        let subject = format!("bob's large mail {n}");
        let out = lab.swaks(&[
            "--to",
            "box@bob.example.org",
            "--header",
            &format!("Subject: {subject}"),
            "--attach",
            &format!("@{}", large.display()),
            "--suppress-data",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        subjects.push(subject);
    }
    assert!(
        common::wait_until(DELIVERY_LIMIT, || subjects
            .iter()
            .all(|s| lab.delivered("bob", s))),
        "bob never got his large mails:\n{}",
        lab.diagnostics()
    );

    // The front deletes a queue file only after its delivery: what it frees must not
    // free the full partition again.
    assert!(
        common::wait_until(DELIVERY_LIMIT, || common::postfix_queue_files(&lab.state())
            .is_empty()),
        "the front's queue never emptied:\n{}",
        lab.diagnostics()
    );
    let fillers = fill(&state);
    let shown = state.display().to_string();

    let (ok, out) = lab.account(&["add", "carol", "--password-stdin"], Some(PASSWORD));
    assert!(!ok, "account add carol on a full disk succeeded: {out}");
    eprintln!("account add carol on a full disk: {out}");
    assert!(
        out.contains(&format!("the data partition {shown} is full"))
            && out.contains("account carol was not added"),
        "account add carol: {out}"
    );
    assert_eq!(lab.file(), file_before, "the add changed the file");
    assert_eq!(
        lab.dig("carol.example.org", "MX"),
        "",
        "carol is in the zone"
    );
    assert!(!lab.units().contains("box-carol"), "{}", lab.units());
    assert!(!state.join("mail/carol").exists(), "carol has a home");

    let (ok, out) = lab.account(&["del", "bob"], None);
    assert!(!ok, "account del bob on a full disk succeeded: {out}");
    eprintln!("account del bob on a full disk: {out}");
    assert!(
        out.contains("account bob was not deleted")
            && out.contains(&format!("the data partition {shown} is full")),
        "account del bob: {out}"
    );
    assert_eq!(lab.file(), file_before, "the del changed the file");
    assert_eq!(lab.dig("bob.example.org", "MX"), "10 mail.example.org.");
    assert!(
        state.join("mail/bob/Maildir").is_dir(),
        "bob's mail is gone"
    );
    let backups: Vec<_> = std::fs::read_dir(state.join("backups"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(backups.is_empty(), "left in backups: {backups:?}");
    assert!(
        common::wait_until(TIMEOUT, || lab.units().contains("box-bob")),
        "bob's box is not back: {}",
        lab.units()
    );

    for filler in fillers {
        std::fs::remove_file(filler).unwrap();
    }
    let reply = lab.rcpt_reply("box@carol.example.org");
    assert!(reply.contains("554 5.7.1"), "mail to carol: {reply}");
    for name in ["alice", "bob"] {
        let to = format!("box@{name}.example.org");
        let subject = format!("after the disk was full, to {name}");
        let sent = common::wait_until(TIMEOUT, || {
            lab.swaks(&["--to", &to, "--header", &format!("Subject: {subject}")])
                .status
                .success()
        });
        assert!(sent, "the front never took mail for {name}");
        assert!(
            common::wait_until(DELIVERY_LIMIT, || lab.delivered(name, &subject)),
            "{name} never got {subject:?}:\n{}",
            lab.diagnostics()
        );
    }
}

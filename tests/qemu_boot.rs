//! Boots the test image under `qemu-system-aarch64 -M raspi3b` and drives its serial
//! console: early boot (coldplugged modules, partitions, data growth), the network on
//! QEMU's USB adapter with the file's static address, the login and `status`, the zone's
//! MX answered to `dig` on the host through a forwarded port; the mail system: the image
//! imported, a message sent with `swaks` through the forwarded port 25 to alice and read with
//! `imaplib` through the forwarded 993, `status` with every box running; and a power-off
//! that stops the boxes, the front and containerd in that order and waits only for
//! processes, not kernel threads; the card's partition table read back after it: the data
//! partition and its filesystem reach the end of the 64 GiB card (beyond the 32 GiB its
//! filesystem's reserve covers). Then, on the same SD card, a
//! broken letterbox.toml: the boot continues, the console shows the error with line and
//! column, the agent, the console and `status` say the last good configuration is running,
//! and the login works; then QEMU is killed while mail is being sent (a power cut). The
//! data partition is checked by e2fsck at boot and left clean by the power-off (read back
//! with `e2fsck -fn`). Third, a boot partition that will not mount: the last good
//! configuration from /data runs and the console says so, e2fsck ran after the power cut,
//! and every message that got a 250 before it is in alice's INBOX. Fourth, the agent
//! pets the kernel's softdog (`letterbox.watchdog=softdog`) and the guest is not reset.
//!
//! Needs `make test-image` (make test runs it first). Slow under TCG emulation, so the
//! timeouts are generous, and what the agent logs on its own schedule is waited for, never
//! assumed to be there already. On failure the agent's own console lines and the log's
//! tail are printed (CI shows the head of a failure), and the whole log is saved.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use letterbox::image::qemu;
use letterbox::paths;

const TEST_IMAGE: &str = "out/test-rpi3.img";
const PASSWORD: &str = "letterbox-test";
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The fixture's accounts' password (alice, bob).
const MAIL_PASSWORD: &str = "letterbox-mail";
/// From login to port 25's banner: the mail image imported on first boot, then the
/// front's and the boxes' containers started, all under TCG.
const MAIL_UP_TIMEOUT: Duration = Duration::from_secs(480);
/// The console line of `front-postfix` once port 25 greets.
const MAIL_ACCEPTED: &str = "front-postfix: mail accepted on port 25";

/// Logs in over IMAP with TLS (the self-signed certificate unchecked) and prints the
/// INBOX's subjects, one a line; exits 2 when the login is refused.
const IMAP_CLIENT: &str = r#"
import email, imaplib, ssl, sys
port, user, password = sys.argv[1:4]
tls = ssl.create_default_context()
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
imap = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=tls, timeout=60)
try:
    imap.login(user, password)
except imaplib.IMAP4.error as e:
    print(e, file=sys.stderr)
    sys.exit(2)
imap.select("INBOX", readonly=True)
for num in imap.search(None, "ALL")[1][0].split():
    print(email.message_from_bytes(imap.fetch(num, "(RFC822)")[1][0][1])["Subject"])
imap.logout()
"#;

struct Vm {
    child: Child,
    stdin: ChildStdin,
    log: Arc<Mutex<String>>,
    /// Where the whole console log is saved when the VM is dropped.
    saved_log: PathBuf,
    /// Where in the log the next `wait_for` starts looking.
    cursor: usize,
}

impl Vm {
    /// Boots the card; `name` names the saved console log.
    fn boot(prepared: &qemu::Prepared, forwards: &[String], name: &str) -> Vm {
        use std::os::unix::process::CommandExt;
        let mut cmd = qemu::command(prepared, "stdio", forwards);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        // QEMU dies with the test's thread even when the test process is killed (no Drop).
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-aarch64");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
            }
        });
        Vm {
            child,
            stdin,
            log,
            saved_log: Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qemu-{name}.log")),
            cursor: 0,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Panics with `what`, the agent's console lines and the log's last lines (the whole
    /// log is saved when the VM is dropped).
    fn fail(&self, what: &str) -> ! {
        let log = self.log();
        let agent: Vec<&str> = log.lines().filter(|l| l.contains("letterbox")).collect();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        panic!(
            "{what}\n--- the agent's console lines ---\n{}\n--- the last {} console lines \
             ---\n{}\n--- the whole console log: {}",
            agent.join("\n"),
            tail.len(),
            tail.join("\n"),
            self.saved_log.display()
        );
    }

    /// Waits for `needle` after the previous match.
    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(at) = log[self.cursor..].find(needle) {
                self.cursor += at + needle.len();
                return;
            }
            if start.elapsed() > timeout {
                self.fail(&format!("no {needle:?} on the console within {timeout:?}"));
            }
            self.fail_if_exited(&format!("{needle:?}"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the whole log satisfies `found`: for lines the agent prints on its own
    /// schedule, which may come before or after the last match.
    fn wait_until(&mut self, what: &str, timeout: Duration, found: impl Fn(&str) -> bool) {
        let start = Instant::now();
        while !found(&self.log()) {
            if start.elapsed() > timeout {
                self.fail(&format!("not within {timeout:?}: {what}"));
            }
            self.fail_if_exited(what);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn fail_if_exited(&mut self, before: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.fail(&format!("qemu exited ({status}) before {before}"));
        }
    }

    /// Types a line slowly enough for the emulated UART's FIFO.
    fn send(&mut self, line: &str) {
        for chunk in format!("{line}\r").as_bytes().chunks(8) {
            self.stdin.write_all(chunk).unwrap();
            self.stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn assert_log(&self, what: &str, found: impl Fn(&str) -> bool) {
        if !found(&self.log()) {
            self.fail(what);
        }
    }

    fn login(&mut self) {
        self.wait_for("mail login: ", BOOT_TIMEOUT);
        self.send("admin");
        self.wait_for("Password: ", REPLY_TIMEOUT);
        self.send(PASSWORD);
        self.wait_for("mail# ", REPLY_TIMEOUT);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(e) = std::fs::write(&self.saved_log, self.log()) {
            eprintln!("could not save {}: {e}", self.saved_log.display());
        }
    }
}

/// The zone's MX as `dig +short` prints it, asked from the host through QEMU's
/// forwarded port; retried while the emulated guest is slow to answer.
fn dig_mx(port: u16) -> String {
    let start = Instant::now();
    loop {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port.to_string()])
            .args(["example.org", "MX", "+short", "+time=3", "+tries=1"])
            .output()
            .expect("run dig");
        let answer = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !answer.trim().is_empty() || start.elapsed() > REPLY_TIMEOUT {
            return answer;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Sends one message through the forwarded port 25 with swaks; its output when the front
/// answered 250 to the data, retried (a front still starting refuses connections).
fn swaks(port: u16, to: &str, subject: &str, timeout: Duration) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let out = Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--helo",
                "client.example.net",
                "--from",
                "tester@example.net",
            ])
            .args(["--to", to, "--header", &format!("Subject: {subject}")])
            .args(["--timeout", "60"])
            .output()
            .expect("run swaks");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return Ok(text);
        }
        if start.elapsed() > timeout {
            return Err(text);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The INBOX subjects of `user` through the forwarded IMAP-over-TLS port, retried until
/// `done` holds for them (a box still starting refuses the proxied login).
fn imap_until(
    port: u16,
    user: &str,
    timeout: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Result<Vec<String>, String> {
    let start = Instant::now();
    loop {
        let out = Command::new("python3")
            .args(["-c", IMAP_CLIENT, &port.to_string(), user, MAIL_PASSWORD])
            .output()
            .expect("run python3");
        let subjects: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if out.status.success() && done(&subjects) {
            return Ok(subjects);
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "{}: {subjects:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The `status` reply's unit lines: each unit's name and whether it is running.
fn status_units(status: &str) -> Vec<(String, bool)> {
    status
        .lines()
        .skip_while(|l| !l.starts_with("units:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_string();
            Some((name, words.next() == Some("running")))
        })
        .collect()
}

/// Answers SNTP on the host's 127.0.0.1:123 with the host's clock, which QEMU's
/// user-mode network serves the guest as 10.0.2.2:123 (the fixture's `ntp`): the guest has
/// no RTC, and its mail makes no TLS key before its clock is set.
fn serve_sntp() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:123")
        .expect("bind 127.0.0.1:123 for the guest's SNTP (another QEMU test running?)");
    std::thread::spawn(move || {
        let mut request = [0u8; 48];
        while let Ok((n, from)) = socket.recv_from(&mut request) {
            if n < 48 {
                continue;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            // NTP's era starts in 1900; the fraction is in 2^-32 s.
            let seconds = (now.as_secs() + 2_208_988_800) as u32;
            let fraction = ((u64::from(now.subsec_nanos()) << 32) / 1_000_000_000) as u32;
            let mut stamp = [0u8; 8];
            stamp[..4].copy_from_slice(&seconds.to_be_bytes());
            stamp[4..].copy_from_slice(&fraction.to_be_bytes());
            let mut reply = [0u8; 48];
            reply[0] = (request[0] & 0x38) | 4; // no leap warning, the client's version, server
            reply[1] = 1; // stratum 1
            reply[2] = request[2];
            reply[3] = 0xec; // precision 2^-20 s
            reply[12..16].copy_from_slice(b"LOCL");
            reply[16..24].copy_from_slice(&stamp); // reference
            reply[24..32].copy_from_slice(&request[40..48]); // originate: the client's transmit
            reply[32..40].copy_from_slice(&stamp); // receive
            reply[40..48].copy_from_slice(&stamp); // transmit
            let _ = socket.send_to(&reply, from);
        }
    });
}

/// A loopback port free for both UDP and TCP right now, for QEMU's host forward.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The whole module names a "modules: ...: loaded a b c" console line lists.
fn loaded_modules(line: &str) -> Vec<&str> {
    // The kernel's own console lines may cut into the agent's ("loaded overlay[ 6.89] hub
    // 1-1:1.0: ..."): a name ends at white space or at the kernel's time stamp.
    line.split_once(": loaded ")
        .map(|(_, names)| {
            names
                .split(|c: char| c.is_whitespace() || c == '[')
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// After the first boot, read back from the card: the data partition (3, the last) ends at
/// the card's last sector (a power of two, so already on the 4 MiB alignment), having
/// started where the image put it and ended short of that; and its ext4 filesystem fills it,
/// past the 32 GiB its reserved group descriptor blocks cover.
fn assert_data_partition_fills_the_card(image: &Path, card: &Path) {
    let table = |path: &Path| {
        let mut f = std::fs::File::open(path).unwrap();
        mbrman::MBR::read_from(&mut f, 512).unwrap()
    };
    let (built, grown) = (table(image), table(card));
    let card_sectors = std::fs::metadata(card).unwrap().len() / 512;
    let end = |p: &mbrman::MBRPartitionEntry| u64::from(p.starting_lba) + u64::from(p.sectors);
    assert_eq!(
        grown[3].starting_lba, built[3].starting_lba,
        "the data partition moved"
    );
    assert!(
        end(&built[3]) < card_sectors,
        "the image's data partition already ended at the card's end: nothing to grow"
    );
    assert_eq!(
        end(&grown[3]),
        card_sectors,
        "the data partition ends at sector {} of a {card_sectors}-sector card",
        end(&grown[3])
    );
    assert!(grown[4].is_unused(), "a fourth partition appeared");
    let data_bytes = u64::from(grown[3].sectors) * 512;
    let fs_bytes = ext4_bytes(card, u64::from(grown[3].starting_lba) * 512);
    assert_eq!(
        fs_bytes, data_bytes,
        "the data filesystem's size against its partition's"
    );
    assert!(
        data_bytes > 32 << 30,
        "a {data_bytes}-byte data partition: no growth beyond the 32 GiB its filesystem's \
         reserve covers"
    );
}

/// An ext4 filesystem's size from its superblock (block count and size), at `offset`.
fn ext4_bytes(card: &Path, offset: u64) -> u64 {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(card).unwrap();
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(offset + 1024)).unwrap();
    f.read_exact(&mut sb).unwrap();
    assert_eq!(sb[0x38..0x3a], [0x53, 0xef], "no ext4 superblock");
    let le32 = |at: usize| u64::from(u32::from_le_bytes(sb[at..at + 4].try_into().unwrap()));
    let incompat_64bit = le32(0x60) & 0x80 != 0;
    let blocks = le32(0x04) | if incompat_64bit { le32(0x150) << 32 } else { 0 };
    blocks * (1024 << le32(0x18))
}

/// After a power-off, read back from the card: the data filesystem was left clean (the
/// agent remounted it read-only; a mounted ext4 that was only synced still says "needs
/// recovery"), and `e2fsck -fn` finds nothing to fix.
fn assert_data_filesystem_clean(card: &Path) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(card).unwrap();
    let mbr = mbrman::MBR::read_from(&mut f, 512).unwrap();
    let offset = u64::from(mbr[3].starting_lba) * 512;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(offset + 1024)).unwrap();
    f.read_exact(&mut sb).unwrap();
    let le16 = |at: usize| u16::from_le_bytes(sb[at..at + 2].try_into().unwrap());
    let le32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().unwrap());
    const STATE_VALID: u16 = 1;
    const INCOMPAT_RECOVER: u32 = 4;
    assert_eq!(le16(0x3a) & STATE_VALID, STATE_VALID, "s_state not clean");
    assert_eq!(
        le32(0x60) & INCOMPAT_RECOVER,
        0,
        "the journal needs recovery"
    );
    // In place, at the partition's offset: the card is sparse, a copy of it would not be.
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={offset}", card.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn of the data partition: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fat_offset(image: &Path) -> u64 {
    let mut f = std::fs::File::open(image).unwrap();
    let mbr = mbrman::MBR::read_from(&mut f, 512).unwrap();
    u64::from(mbr[1].starting_lba) * 512
}

/// First boot's mail: the image imported and the containers up (the console says when
/// port 25 greets); a message through the forwarded port 25 to alice, read through the
/// forwarded 993; `status` with every box running. Timings (wall clock, TCG) are printed.
fn check_the_mail_system(vm: &mut Vm, booted: Instant, smtp_port: u16, imaps_port: u16) {
    vm.wait_until("port 25 accepts mail", MAIL_UP_TIMEOUT, |log| {
        log.contains(MAIL_ACCEPTED)
    });
    eprintln!(
        "timing: mail accepted on port 25 {:.0} s after QEMU started",
        booted.elapsed().as_secs_f64()
    );
    vm.assert_log("the mail image was imported from the root", |log| {
        log.contains("mail image letterbox-mail:latest")
            && log.contains("imported from /usr/share/letterbox/letterbox-mail")
    });
    let step = Instant::now();
    let subject = "hello alice through QEMU";
    if let Err(out) = swaks(smtp_port, "box@alice.example.org", subject, REPLY_TIMEOUT) {
        vm.fail(&format!("swaks through the forwarded port 25:\n{out}"));
    }
    eprintln!(
        "timing: swaks got 250 in {:.0} s",
        step.elapsed().as_secs_f64()
    );
    let step = Instant::now();
    if let Err(e) = imap_until(imaps_port, "alice", REPLY_TIMEOUT, |subjects| {
        subjects.iter().any(|s| s == subject)
    }) {
        vm.fail(&format!("alice's INBOX through the forwarded 993: {e}"));
    }
    eprintln!(
        "timing: alice read it over IMAP {:.0} s later",
        step.elapsed().as_secs_f64()
    );

    // `account add carol` on the console (the password typed twice): written to
    // /boot/letterbox.toml through a moment's read-write remount of the FAT partition,
    // her box started; then her IMAP login, which finds her welcome mail.
    let step = Instant::now();
    vm.send("account add carol");
    vm.wait_for("Password: ", REPLY_TIMEOUT);
    vm.send(MAIL_PASSWORD);
    vm.wait_for("Again: ", REPLY_TIMEOUT);
    vm.send(MAIL_PASSWORD);
    vm.wait_for("account carol added", MAIL_UP_TIMEOUT);
    vm.wait_for("mail# ", REPLY_TIMEOUT);
    if let Err(e) = imap_until(imaps_port, "carol", REPLY_TIMEOUT, |subjects| {
        subjects.iter().any(|s| s.starts_with("Welcome to"))
    }) {
        vm.fail(&format!("carol's INBOX through the forwarded 993: {e}"));
    }
    eprintln!(
        "timing: account add carol to her welcome mail over IMAP {:.0} s",
        step.elapsed().as_secs_f64()
    );
    vm.send("status");
    vm.wait_for("interfaces:", REPLY_TIMEOUT);
    vm.wait_for("mail# ", REPLY_TIMEOUT);
    let log = vm.log();
    let status = &log[log.rfind("units:").unwrap()..];
    let units = status_units(status);
    for unit in [
        "containerd",
        "mail",
        "front-postfix",
        "front-dovecot",
        "box-alice",
        "box-bob",
        "box-carol",
    ] {
        if !units.iter().any(|(name, running)| name == unit && *running) {
            vm.fail(&format!("status does not show {unit} running: {units:?}"));
        }
    }
}

/// How many messages get a 250 before the power is cut (the next one is in flight).
const ACCEPTED_BEFORE_THE_CUT: usize = 3;

/// Sends to alice, one message after another, until [`ACCEPTED_BEFORE_THE_CUT`] got a 250,
/// then kills QEMU while the next is being sent; the subjects that got a 250.
fn send_until_power_cut(mut vm: Vm, smtp_port: u16) -> Vec<String> {
    vm.wait_until("port 25 accepts mail", MAIL_UP_TIMEOUT, |log| {
        log.contains(MAIL_ACCEPTED)
    });
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let sender = {
        let accepted = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for n in 0.. {
                let subject = format!("power cut {n}");
                // One try each: after the cut every send fails, and the thread ends.
                match swaks(smtp_port, "box@alice.example.org", &subject, Duration::ZERO) {
                    Ok(_) => accepted.lock().unwrap().push(subject),
                    Err(_) => return n,
                }
            }
            unreachable!()
        })
    };
    let start = Instant::now();
    while accepted.lock().unwrap().len() < ACCEPTED_BEFORE_THE_CUT {
        if start.elapsed() > REPLY_TIMEOUT || sender.is_finished() {
            vm.fail(&format!(
                "only {:?} got a 250 before the power cut",
                accepted.lock().unwrap()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The next message is on its way: cut the power now.
    std::thread::sleep(Duration::from_millis(500));
    let _ = vm.child.kill();
    let tried = sender.join().unwrap();
    drop(vm);
    let accepted = accepted.lock().unwrap().clone();
    eprintln!(
        "power cut: {} of {tried} messages got a 250",
        accepted.len()
    );
    accepted
}

/// The power-off stopped the boxes, then the front (Postfix's queue is on /data), then
/// containerd, before /data was remounted read-only.
fn assert_mail_stopped_in_order(vm: &Vm) {
    let log = vm.log();
    let at = |needle: &str| {
        log.rfind(needle)
            .unwrap_or_else(|| vm.fail(&format!("no {needle:?} at the power-off")))
    };
    let boxes = ["box-alice stopped", "box-bob stopped"].map(&at);
    let front = at("front-postfix stopped");
    let containerd = at("containerd stopped");
    let data = at("/data remounted read-only");
    if !(boxes.iter().all(|&b| b < front) && front < containerd && containerd < data) {
        vm.fail(&format!(
            "stop order: boxes at {boxes:?}, front-postfix at {front}, containerd at {containerd}, \
             /data read-only at {data}"
        ));
    }
}

#[test]
fn qemu_boots_to_login_with_network_and_survives_a_broken_file() {
    let test = "qemu_boots_to_login_with_network_and_survives_a_broken_file";
    let image = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(TEST_IMAGE);
    if !image.is_file() {
        common::skip(
            test,
            "no out/test-rpi3.img: run `make test-image` (make test does)",
        );
        return;
    }
    serve_sntp();
    let work = tempfile::tempdir().unwrap();
    let mut prepared = qemu::prepare(&image, work.path(), qemu::Card::Fresh)
        .expect("extract boot files from the image");

    // First boot: a good letterbox.toml; the appliance's DNS port forwarded to the host.
    let dns_port = free_port();
    let (smtp_port, imaps_port) = (free_port(), free_port());
    let forwards = [
        format!("udp:127.0.0.1:{dns_port}-:53"),
        qemu::tcp_forward(smtp_port, 25),
        qemu::tcp_forward(imaps_port, 993),
    ];
    let booted = Instant::now();
    let mut vm = Vm::boot(&prepared, &forwards, "first-boot");
    vm.wait_for("Machine model: Raspberry Pi 3 Model B", BOOT_TIMEOUT);
    vm.wait_for(
        &format!(
            "letterbox {} starting (as PID 1)",
            env!("CARGO_PKG_VERSION")
        ),
        BOOT_TIMEOUT,
    );
    vm.wait_for("early boot: found SD card mmcblk0", BOOT_TIMEOUT);
    vm.wait_for(
        "early boot: switched to the read-only root filesystem",
        BOOT_TIMEOUT,
    );
    vm.wait_for("early boot: done", BOOT_TIMEOUT);
    vm.assert_log("the SD host driver was coldplugged", |log| {
        log.lines().any(|l| {
            l.contains("modules: of:")
                && loaded_modules(l)
                    .iter()
                    .any(|m| ["sdhci_iproc", "bcm2835"].contains(m))
        })
    });
    vm.assert_log("the data partition grew to fill the card", |log| {
        log.contains("grew data partition") && log.contains("grew the data filesystem")
    });
    vm.assert_log("/dev/serial0 names the console UART", |log| {
        log.contains("/dev/serial0 is /dev/ttyS1")
    });
    vm.assert_log(
        "e2fsck checked the data partition before it was mounted",
        |log| log.contains("data partition /dev/mmcblk0p3 is clean"),
    );
    vm.assert_log("the containers' kernel modules were loaded", |log| {
        let loaded: Vec<&str> = log.lines().flat_map(loaded_modules).collect();
        ["overlay", "veth", "bridge"]
            .iter()
            .all(|m| loaded.contains(m))
    });
    vm.login();
    // Logged by the hotplug thread once the module is in, which may be after eth0 is up.
    vm.wait_until(
        "the USB network adapter's driver was loaded",
        REPLY_TIMEOUT,
        |log| {
            log.lines().any(|l| {
                l.contains("modules: usb:")
                    && loaded_modules(l)
                        .iter()
                        .any(|m| ["cdc_ether", "rndis_host"].contains(m))
            })
        },
    );
    vm.send("status");
    vm.wait_for("interfaces:", REPLY_TIMEOUT);
    vm.wait_for("mail# ", REPLY_TIMEOUT);
    vm.assert_log(
        "status shows the static address from the file on eth0",
        |log| {
            let status = &log[log.rfind("interfaces:").unwrap()..];
            status.contains("eth0") && status.contains("10.0.2.15/24")
        },
    );
    vm.wait_until("the DNS unit serves the zone", REPLY_TIMEOUT, |log| {
        log.contains("dns: serving example.org on 10.0.2.15:53")
    });
    let mx = dig_mx(dns_port);
    if !mx.lines().any(|l| l.trim() == "10 mail.example.org.") {
        vm.fail(&format!("MX answer through the forwarded port: {mx:?}"));
    }
    check_the_mail_system(&mut vm, booted, smtp_port, imaps_port);
    let stopping = Instant::now();
    vm.send("poweroff");
    vm.wait_for("reboot: Power down", REPLY_TIMEOUT);
    eprintln!(
        "timing: poweroff took {:.0} s",
        stopping.elapsed().as_secs_f64()
    );
    assert_mail_stopped_in_order(&vm);
    // Kernel threads never end: shutdown must not wait for them and then kill in vain.
    vm.assert_log("shutdown found every other process ended", |log| {
        log.contains("every other process has ended") && !log.contains("sending SIGKILL")
    });
    vm.assert_log(
        "/data was remounted read-only before the power-off",
        |log| log.contains("/data remounted read-only"),
    );
    drop(vm);
    assert_data_partition_fills_the_card(&image, &prepared.sd_card);
    assert_data_filesystem_clean(&prepared.sd_card);

    // Second boot from the same card, with a broken letterbox.toml written by mcopy.
    let broken = work.path().join("letterbox.toml");
    std::fs::write(
        &broken,
        "version = 1\n[system]\nhostname = \"mail\"\ndomain = 42\n",
    )
    .unwrap();
    let out = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-o")
        .arg("-i")
        .arg(format!(
            "{}@@{}",
            prepared.sd_card.display(),
            fat_offset(&prepared.sd_card)
        ))
        .arg(&broken)
        .arg("::letterbox.toml")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mcopy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (smtp_port, imaps_port) = (free_port(), free_port());
    let mail_forwards = [
        qemu::tcp_forward(smtp_port, 25),
        qemu::tcp_forward(imaps_port, 993),
    ];
    let mut vm = Vm::boot(&prepared, &mail_forwards, "broken-file-boot");
    vm.wait_for("early boot: done", BOOT_TIMEOUT);
    // `domain = 42`: the value, in column 10 (waited for whole: the line may arrive in
    // pieces).
    vm.wait_until("the error names line 4, column 10", BOOT_TIMEOUT, |log| {
        log.contains("letterbox.toml:4:10:")
    });
    // The first boot's file, saved on the data partition: its domain, not the broken 42.
    let last_good = format!("{}/{}", paths::STATE_DIR, paths::LAST_GOOD_FILE);
    vm.wait_until(
        "the agent falls back to the first boot's file",
        BOOT_TIMEOUT,
        |log| {
            log.contains(&format!(
                "using the last good configuration {last_good} (mail.example.org)"
            ))
        },
    );
    vm.wait_for(
        "letterbox.toml has errors (logged above; `check` shows them again): \
         running the last good configuration.",
        BOOT_TIMEOUT,
    );
    vm.login();
    vm.send("status");
    vm.wait_for("config:", REPLY_TIMEOUT);
    vm.wait_for("mail# ", REPLY_TIMEOUT);
    vm.assert_log(
        "status says the last good configuration is running",
        |log| {
            let status = &log[log.rfind("config:").unwrap()..];
            let config = status.lines().next().unwrap_or_default();
            config.contains(&format!("last good configuration {last_good}"))
                && config.contains("letterbox.toml has errors")
        },
    );
    vm.wait_until(
        "the last good configuration's zone is served",
        REPLY_TIMEOUT,
        |log| log.contains("dns: serving example.org on 10.0.2.15:53"),
    );
    // The last good configuration runs the mail too. Power cut: QEMU is killed while
    // messages are being sent and delivered.
    let accepted = send_until_power_cut(vm, smtp_port);

    // Third boot: a boot partition that will not mount (its boot sector zeroed on the
    // card; QEMU reads the kernel from the files extracted before). /data is mounted first,
    // so the last good configuration still runs, and the console says why.
    {
        use std::io::{Seek, SeekFrom};
        let offset = fat_offset(&prepared.sd_card);
        let mut card = std::fs::File::options()
            .write(true)
            .open(&prepared.sd_card)
            .unwrap();
        card.seek(SeekFrom::Start(offset)).unwrap();
        card.write_all(&[0u8; 512]).unwrap();
    }
    let mut vm = Vm::boot(&prepared, &mail_forwards, "no-boot-partition");
    vm.wait_for("early boot: cannot mount the boot partition", BOOT_TIMEOUT);
    vm.wait_for(
        "early boot: done: boot partition NOT MOUNTED, data on /data",
        BOOT_TIMEOUT,
    );
    vm.wait_until(
        "the agent runs the last good configuration from /data",
        BOOT_TIMEOUT,
        |log| {
            log.contains(&format!(
                "using the last good configuration {last_good} (mail.example.org)"
            ))
        },
    );
    vm.login();
    vm.wait_until(
        "the last good configuration's zone is served",
        REPLY_TIMEOUT,
        |log| log.contains("dns: serving example.org on 10.0.2.15:53"),
    );
    vm.assert_log(
        "e2fsck ran on the data partition after the power cut",
        |log| {
            log.contains("data partition /dev/mmcblk0p3 is clean")
                || log.contains("e2fsck repaired the data partition /dev/mmcblk0p3")
        },
    );
    let step = Instant::now();
    vm.wait_until("port 25 accepts mail", MAIL_UP_TIMEOUT, |log| {
        log.contains(MAIL_ACCEPTED)
    });
    if let Err(e) = imap_until(imaps_port, "alice", MAIL_UP_TIMEOUT, |subjects| {
        accepted.iter().all(|a| subjects.contains(a))
    }) {
        vm.fail(&format!(
            "after the power cut, alice's INBOX lacks some of the {accepted:?} that got a 250: {e}"
        ));
    }
    eprintln!(
        "timing: after the power cut, all {} accepted messages read {:.0} s after login",
        accepted.len(),
        step.elapsed().as_secs_f64()
    );
    vm.send("poweroff");
    vm.wait_for("reboot: Power down", REPLY_TIMEOUT);
    drop(vm);

    // Fourth boot: the agent's watchdog is the kernel's softdog (raspi3b's own resets the
    // moment it is armed). Petted from the main loop, the guest outlives its 15 s timeout
    // several times over; the power-off disarms it.
    prepared.cmdline.push_str(" letterbox.watchdog=softdog");
    let mut vm = Vm::boot(&prepared, &[], "softdog");
    vm.wait_until("early boot loaded softdog", BOOT_TIMEOUT, |log| {
        log.lines().flat_map(loaded_modules).any(|m| m == "softdog")
    });
    vm.wait_for("watchdog: /dev/watchdog", BOOT_TIMEOUT);
    vm.wait_for("armed (15 s)", REPLY_TIMEOUT);
    let armed = Instant::now();
    vm.login();
    while armed.elapsed() < Duration::from_secs(50) {
        vm.fail_if_exited("50 s with the watchdog armed");
        std::thread::sleep(Duration::from_millis(500));
    }
    vm.assert_log("the petted watchdog never reset the guest", |log| {
        log.matches("Booting Linux").count() == 1 && !log.contains("softdog: Initiating")
    });
    vm.send("poweroff");
    vm.wait_for("disarmed", REPLY_TIMEOUT);
    vm.wait_for("reboot: Power down", REPLY_TIMEOUT);
}

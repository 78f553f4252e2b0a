//! The agent's containers units under `letterbox run`: trixie's containerd (fetched by `make
//! containerd-trixie`) as a supervised child with its root, state and socket in the run's
//! state directory, never the host's, and the `letterbox-mail` image (`make mail-image`)
//! imported into it; a missing image is reported and retried while DNS keeps answering.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{KillOnDrop, Netns, TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A cold import of the 37 MiB image on a loaded machine; a deadline, not a goal.
const IMPORT_LIMIT: Duration = Duration::from_secs(120);

/// Whether the test can run; if not, it is skipped, naming what is missing.
fn can_run(test: &str, needs_image: bool) -> bool {
    common::mail_parts_present(test, &["dig", "nsenter"], needs_image)
}

/// A network namespace with the agent's link, a provisioning file, and a state directory.
struct Lab {
    netns: Netns,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let (netns, link) = Netns::with_veth("actr");
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "version = 1\n\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\n\
             [[interface]]\nname = \"{link}\"\nipv4 = [\"192.0.2.10/24\"]\n\n\
             [dns]\nlisten = [\"192.0.2.10:53\"]\n"
        );
        std::fs::write(dir.path().join("letterbox.toml"), config).unwrap();
        Lab { netns, dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The agent's stderr (its log), in the order the runs started.
    fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// `letterbox run` in the namespace, with containerd and the mail image at `image`; its
    /// log is appended to [`Lab::log`].
    fn start_agent(&self, image: &Path) -> KillOnDrop {
        common::start_mail_agent(&self.netns, self.dir.path(), image)
    }

    fn ctl(&self, args: &[&str]) -> Option<String> {
        common::ctl(&self.socket(), args)
    }

    fn unit(&self, unit: &str) -> Option<String> {
        common::unit_line(&self.socket(), unit)
    }

    /// The line of `ctl status` that starts with `label`.
    fn status_line(&self, label: &str) -> Option<String> {
        let status = self.ctl(&["status"])?;
        status
            .lines()
            .find(|l| l.starts_with(label))
            .map(str::to_string)
    }

    fn dig_mx(&self) -> String {
        let out = self
            .netns
            .exec("dig")
            .args(["@192.0.2.10", "+short", "+time=2", "+tries=1"])
            .args(["example.org", "MX"])
            .output()
            .expect("dig runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Processes whose command line names this lab's containerd directory: containerd
    /// itself (its config is there) and any shim (its socket is).
    fn containerd_processes(&self) -> Vec<String> {
        let ours = self.state().join("containerd").display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter_map(|e| {
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                cmdline.contains(&ours).then_some(cmdline)
            })
            .collect()
    }

    /// SIGTERM to the agent: it stops the mail unit, then containerd, then DNS, and exits
    /// successfully within the limit, leaving no containerd.
    fn stop(&self, agent: &mut KillOnDrop) {
        let logged_before = std::fs::read_to_string(self.log()).unwrap().len();
        kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).unwrap();
        let status = common::wait_for(TIMEOUT, || agent.try_wait().unwrap())
            .expect("the agent did not exit within the limit after SIGTERM");
        assert!(status.success(), "the agent exited with {status}");
        assert_eq!(
            self.containerd_processes(),
            Vec::<String>::new(),
            "containerd left behind"
        );
        let log = std::fs::read_to_string(self.log()).unwrap();
        let shutdown = &log[logged_before..];
        let mut at = 0;
        for step in [
            "SIGTERM received",
            "stopping unit mail",
            "unit mail stopped",
            "stopping unit containerd",
            "unit containerd stopped",
            "stopping unit dns",
            "unit dns stopped",
        ] {
            match shutdown[at..].find(step) {
                Some(i) => at += i + step.len(),
                None => panic!("{step:?} missing or out of order:\n{shutdown}"),
            }
        }
    }
}

/// The manifest digest in the image's lock file (`manifest sha256:…`).
fn locked_manifest(image: &Path) -> String {
    let lock = std::fs::read_to_string(format!("{}.lock", image.display())).unwrap();
    lock.lines()
        .find_map(|l| l.strip_prefix("manifest "))
        .expect("a manifest line in the lock file")
        .to_string()
}

#[test]
fn run_mode_imports_the_mail_image_once_and_stops_containerd_with_the_agent() {
    let test = "run_mode_imports_the_mail_image_once_and_stops_containerd_with_the_agent";
    if !can_run(test, true) {
        return;
    }
    let lab = Lab::new();
    let image = common::built_mail_image();
    let digest = locked_manifest(&image);
    let want = format!("mail image: letterbox-mail:latest {digest} (unpacked)");

    let mut agent = lab.start_agent(&image);
    let imported = common::wait_until(IMPORT_LIMIT, || {
        lab.status_line("mail image:").as_deref() == Some(want.as_str())
    });
    assert!(
        imported,
        "status never showed {want:?}:\n{:?}\nlogs mail:\n{:?}",
        lab.ctl(&["status"]),
        lab.ctl(&["logs", "mail"])
    );
    for unit in ["dns", "containerd", "mail"] {
        let line = lab.unit(unit).unwrap_or_default();
        assert!(line.contains("running"), "{unit}: {line:?}");
    }
    let containerd = lab.status_line("containerd:").unwrap();
    assert!(
        containerd.starts_with("containerd: 1.7.") && containerd.contains("containerd.sock"),
        "{containerd}"
    );
    // containerd's root is the run's, not the host's /var/lib/containerd.
    assert!(lab
        .state()
        .join("containerd/root/io.containerd.metadata.v1.bolt")
        .is_dir());
    let logs = lab.ctl(&["logs", "mail"]).unwrap();
    assert!(logs.contains("layers unpacked"), "{logs}");
    assert!(!logs.contains("already in containerd"), "{logs}");
    assert_eq!(lab.dig_mx(), "10 mail.example.org.");
    assert!(!lab.containerd_processes().is_empty());
    lab.stop(&mut agent);

    // Again on the same state: containerd already has every blob and the snapshot, so the
    // import writes and unpacks nothing, and says so.
    let mut agent = lab.start_agent(&image);
    assert!(
        common::wait_until(IMPORT_LIMIT, || {
            lab.status_line("mail image:").as_deref() == Some(want.as_str())
        }),
        "after a restart: {:?}",
        lab.ctl(&["logs", "mail"])
    );
    let logs = lab.ctl(&["logs", "mail"]).unwrap();
    assert!(
        logs.contains(&format!(
            "mail image letterbox-mail:latest {digest} already in containerd"
        )),
        "{logs}"
    );
    assert!(!logs.contains("layers unpacked"), "{logs}");
    lab.stop(&mut agent);
}

#[test]
fn a_missing_mail_image_is_reported_and_retried_while_dns_answers() {
    let test = "a_missing_mail_image_is_reported_and_retried_while_dns_answers";
    if !can_run(test, false) {
        return;
    }
    let lab = Lab::new();
    let missing = lab.dir.path().join("no-such-image");
    let mut agent = lab.start_agent(&missing);

    let why = format!(
        "the mail image is missing: {}: No such file or directory",
        missing.join("index.json").display()
    );
    let restarting = common::wait_until(TIMEOUT, || {
        lab.unit("mail")
            .is_some_and(|l| l.contains("restarting (failed: ") && l.contains(&why))
    });
    assert!(restarting, "units: {:?}", lab.ctl(&["units"]));
    let status = lab.status_line("mail image:").unwrap();
    assert!(status.contains(&format!("not imported: {why}")), "{status}");
    // containerd itself is fine, and so are DNS and the control socket.
    assert!(
        common::wait_until(TIMEOUT, || lab
            .status_line("containerd:")
            .is_some_and(|l| l.starts_with("containerd: 1.7."))),
        "{:?}",
        lab.ctl(&["status"])
    );
    assert_eq!(lab.dig_mx(), "10 mail.example.org.");
    // Retried with backoff: a second failure follows the first.
    assert!(
        common::wait_until(TIMEOUT, || lab
            .unit("mail")
            .is_some_and(|l| l.contains("; 2 restarts)"))),
        "units: {:?}",
        lab.ctl(&["units"])
    );
    assert!(!lab.containerd_processes().is_empty());
    lab.stop(&mut agent);
}

#[test]
fn a_containerd_that_will_not_start_is_reported_while_dns_answers() {
    let test = "a_containerd_that_will_not_start_is_reported_while_dns_answers";
    if !can_run(test, true) {
        return;
    }
    let lab = Lab::new();
    // A directory where containerd's socket goes: the real containerd cannot listen there.
    std::fs::create_dir_all(lab.state().join("containerd/containerd.sock/in-the-way")).unwrap();
    let mut agent = lab.start_agent(&common::built_mail_image());

    let failing = common::wait_until(TIMEOUT, || {
        lab.unit("containerd")
            .is_some_and(|l| l.contains("restarting (exited with status 1; "))
    });
    assert!(failing, "units: {:?}", lab.ctl(&["units"]));
    let status = lab.status_line("containerd:").unwrap();
    assert!(
        status.starts_with("containerd: not running: restarting (exited with status 1; "),
        "{status}"
    );
    let logs = lab.ctl(&["logs", "containerd"]).unwrap();
    assert!(
        logs.contains("failed to get listener for main endpoint: is a directory"),
        "{logs}"
    );
    let image = lab.status_line("mail image:").unwrap();
    assert!(
        image.ends_with("waiting for containerd to import it"),
        "{image}"
    );
    assert_eq!(lab.dig_mx(), "10 mail.example.org.");
    lab.stop(&mut agent);
}

//! The agent as PID 1 for tests: new PID, mount and UTS namespaces inside a network
//! namespace with a veth pair, its console on a pty, its files in a temporary tree.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use nix::unistd::Pid;

use super::{KillOnDrop, Netns, TIMEOUT};

pub const PASSWORD: &str = "letterbox-test";

/// Skips (and says why) unless root with `unshare` and `ip` available.
pub fn can_run(test: &str) -> bool {
    if !super::is_root() {
        super::skip(test, "needs root for namespaces");
        return false;
    }
    ["unshare", "ip"]
        .iter()
        .all(|tool| super::installed(test, tool))
}

/// Like `can_run`, and `nsenter` too (to start processes in the agent's PID namespace).
pub fn can_enter(test: &str) -> bool {
    can_run(test) && super::installed(test, "nsenter")
}

/// The addresses on the agent's link, as `ip addr show` prints them.
pub fn addresses(ns: &Netns, link: &str) -> String {
    ns.ip(&["addr", "show", "dev", link])
}

/// The master side of a pty, with everything the agent wrote collected by a thread.
pub struct Console {
    master: File,
    pub slave_path: PathBuf,
    pub slave: Option<OwnedFd>,
    output: Arc<(Mutex<String>, Condvar)>,
    /// Where the next `expect` starts looking.
    cursor: usize,
}

impl Console {
    pub fn new() -> Console {
        let pair = nix::pty::openpty(None, None).unwrap();
        let slave_path =
            std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd())).unwrap();
        let master = File::from(pair.master);
        let mut reader = master.try_clone().unwrap();
        let output = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the test drops the pty.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                let (text, changed) = &*sink;
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
                changed.notify_all();
            }
        });
        Console {
            master,
            slave_path,
            slave: Some(pair.slave),
            output,
            cursor: 0,
        }
    }

    /// The pty slave for the agent's stdin/stdout/stderr.
    pub fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.as_ref().unwrap().try_clone().unwrap())
    }

    /// Waits for `needle` after the cursor; returns the text up to and including it and
    /// moves the cursor past it.
    pub fn expect(&mut self, needle: &str) -> String {
        let (text, changed) = &*self.output;
        let deadline = Instant::now() + TIMEOUT;
        let mut guard = text.lock().unwrap();
        loop {
            if let Some(at) = guard[self.cursor..].find(needle) {
                let end = self.cursor + at + needle.len();
                let seen = guard[self.cursor..end].to_string();
                self.cursor = end;
                return seen;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {needle:?}; console so far:\n{}",
                &guard[self.cursor..]
            );
            guard = changed.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    pub fn send(&mut self, line: &str) {
        self.type_keys(&format!("{line}\r"));
    }

    /// Keys as typed, without a line end.
    pub fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Hangs the line up as an unplugged USB-serial adapter does: every open handle of the
    /// tty (the agent's too) then reads end of file and fails writes with EIO, and only a
    /// new open of the device works. vhangup(2) hangs up the caller's controlling terminal,
    /// so a child makes the pty its own first.
    pub fn hang_up(&self) {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let path = std::ffi::CString::new(self.slave_path.as_os_str().as_bytes()).unwrap();
        let mut hang_up = std::process::Command::new("true");
        // SAFETY: between fork and exec the child makes only system calls, which are
        // async-signal-safe, and allocates nothing.
        unsafe {
            hang_up.pre_exec(move || {
                use nix::libc;
                let check = |result: libc::c_int| match result {
                    -1 => Err(std::io::Error::last_os_error()),
                    _ => Ok(()),
                };
                check(libc::setsid())?;
                let fd = libc::open(path.as_ptr(), libc::O_RDWR);
                check(fd)?;
                // 1: take it even if it is another session's controlling terminal (root).
                check(libc::ioctl(fd, libc::TIOCSCTTY, 1))?;
                // The hangup's SIGHUP goes to this session, that is to this child.
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                check(libc::vhangup())
            });
        }
        let status = hang_up.status().expect("cannot hang up the console");
        assert!(status.success(), "hanging up the console: {status:?}");
    }

    pub fn login(&mut self, hostname: &str, password: &str) {
        self.expect(&format!("{hostname} login: "));
        self.send("admin");
        self.expect("Password: ");
        self.send(password);
    }

    /// Logs in with the right password and waits for the admin shell's prompt.
    pub fn shell(&mut self, hostname: &str) {
        self.login(hostname, PASSWORD);
        self.expect(&format!("{hostname}# "));
    }

    /// Runs a shell command and returns its output up to the next prompt.
    pub fn command(&mut self, hostname: &str, command: &str) -> String {
        self.send(command);
        self.expect(&format!("{hostname}# "))
    }
}

/// A temporary tree outside /tmp and /run, which the agent as PID 1 mounts fresh tmpfs
/// over: /var/tmp, since the checkout (and its target/) may itself live under /tmp.
pub struct Dirs {
    _dir: tempfile::TempDir,
    pub boot: PathBuf,
    pub state: PathBuf,
    pub root: PathBuf,
    pub init: PathBuf,
    /// The agent's control socket.
    pub socket: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        let dir = tempfile::Builder::new()
            .prefix("letterbox-init-test")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = |name: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (boot, state, root) = (d("boot"), d("state"), d("root"));
        let init = dir.path().join("letterbox-init");
        std::os::unix::fs::symlink(super::letterbox_bin(), &init).unwrap();
        Dirs {
            socket: dir.path().join("control.sock"),
            boot,
            state,
            root,
            init,
            _dir: dir,
        }
    }

    pub fn provisioning_file(&self) -> PathBuf {
        self.boot.join("letterbox.toml")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.provisioning_file(), text).unwrap();
    }
}

pub fn config(hostname: &str, link: &str, with_hash: bool) -> String {
    let hash = match with_hash {
        true => format!(
            "admin_password_hash = \"{}\"\n",
            letterbox::passwd::hash(PASSWORD).unwrap()
        ),
        false => String::new(),
    };
    format!(
        r#"version = 1
nameservers = ["192.0.2.53"]

[system]
hostname = "{hostname}"
domain = "example.org"

[[interface]]
name = "{link}"
ipv4 = ["192.0.2.10/24"]
gateway4 = "192.0.2.1"
ipv6 = ["2001:db8::10/64"]

[console]
baud = 115200
{hash}"#
    )
}

/// The agent as PID 1: `unshare` forks it into new PID, mount and UTS namespaces inside
/// the test's network namespace. Its console is the pty, handed over as stdin like the
/// kernel hands init /dev/console; `/proc/self/fd/0` reopens it, and works even if /dev
/// had to be mounted over. The host's /sys/fs/cgroup is hidden under an empty tmpfs first
/// (a shell that then becomes the agent), as the appliance's kernel leaves it: whatever
/// the host has there, the agent must mount cgroup v2 itself.
pub struct Pid1 {
    /// Killed on drop (after a failed assertion): --kill-child takes the agent along.
    pub unshare: KillOnDrop,
}

/// `sh -c` script: an empty tmpfs over /sys/fs/cgroup, then exec the agent ($0) with its
/// arguments, keeping PID 1.
const HIDE_CGROUPS_THEN_EXEC: &str =
    "mount -t tmpfs cgroups-hidden /sys/fs/cgroup && exec \"$0\" \"$@\"";

impl Pid1 {
    pub fn boot(ns: &Netns, dirs: &Dirs, console: &Console) -> Pid1 {
        let unshare = ns
            .exec("unshare")
            .args(["--pid", "--mount", "--uts", "--fork", "--kill-child"])
            .args(["sh", "-c", HIDE_CGROUPS_THEN_EXEC])
            .arg(&dirs.init)
            .arg("--boot-dir")
            .arg(&dirs.boot)
            .arg("--state-dir")
            .arg(&dirs.state)
            .arg("--root")
            .arg(&dirs.root)
            .args(["--console", "/proc/self/fd/0"])
            .arg("--socket")
            .arg(&dirs.socket)
            .stdin(console.stdio())
            .stdout(console.stdio())
            .stderr(console.stdio())
            .spawn()
            .unwrap();
        Pid1 {
            unshare: KillOnDrop(unshare),
        }
    }

    /// The agent's pid as the host sees it: the child `unshare` forked.
    pub fn host_pid(&self) -> Pid {
        let unshare = Pid::from_raw(self.unshare.id() as i32);
        super::wait_for(TIMEOUT, || children(unshare).first().copied())
            .expect("unshare forked no child")
    }

    /// How `unshare` ended: it dies of the signal its child (the agent) died of.
    pub fn wait(mut self) -> ExitStatus {
        super::wait_for(TIMEOUT, || self.unshare.try_wait().unwrap())
            .expect("the agent did not end")
    }
}

/// The children of a process, from /proc.
pub fn children(pid: Pid) -> Vec<Pid> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|child| Pid::from_raw(child.parse().unwrap()))
        .collect()
}

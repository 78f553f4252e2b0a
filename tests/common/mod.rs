//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;

pub mod browser;
pub mod mail_image;
pub mod pid1;
pub mod webmail;

/// Marks the current test as skipped: prints SKIPPED on the real stderr (past libtest's
/// capture) and records it so `tests/run` counts it as skipped, not passed.
pub fn skip(test: &str, reason: &str) {
    let line = format!("{test}: {reason}");
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {line} ***");
    if let Ok(path) = std::env::var("LETTERBOX_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Whether `tool` is on the PATH; if not, the test is skipped (and says which tool).
pub fn installed(test: &str, tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip(
            test,
            &format!("`{tool}` is not installed (make test installs it)"),
        );
    }
    found
}

/// True when the process may create namespaces and configure links.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Path of the `letterbox` binary built for this test run.
pub fn letterbox_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_letterbox"))
}

/// trixie's containerd, its shim and runc, as `make containerd-trixie` leaves them.
pub fn trixie_containerd() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/containerd-trixie")
}

/// Where those binaries are: runc (patched to trixie's loader), then containerd and its shim.
pub fn trixie_containerd_dirs() -> [std::path::PathBuf; 2] {
    let trixie = trixie_containerd();
    [trixie.join("bin"), trixie.join("root/usr/bin")]
}

/// trixie's chronyd, extracted and patched by `make chrony-trixie` (never installed).
pub fn trixie_chronyd() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/chrony-trixie/bin/chronyd")
}

/// `make mail-image`'s output for this machine.
pub fn built_mail_image() -> std::path::PathBuf {
    built_image("letterbox-mail")
}

/// `make webmail-image`'s output for this machine.
pub fn built_webmail_image() -> std::path::PathBuf {
    built_image("letterbox-webmail")
}

fn built_image(name: &str) -> std::path::PathBuf {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("out/{name}-{arch}"))
}

/// Generous: the agent answers in milliseconds, but CI machines stall. A deadline for
/// polling, never a timing goal.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// An id unique across the parallel tests of this process and concurrent test processes
/// (the separator keeps pid 0x1a with id 2 apart from pid 0x1 with id 12). At most 6 hex
/// digits + "-" + a few digits, so "lb" + id + one letter fits a 15-byte link name.
pub fn unique_id() -> String {
    let n = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}-{n}", std::process::id())
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `run_ok` of a program and its arguments.
pub fn run(args: &[&str]) -> String {
    run_ok(std::process::Command::new(args[0]).args(&args[1..]))
}

/// `letterbox ctl --socket SOCKET ARGS` against a running agent; its stdout, if it
/// succeeded.
pub fn ctl(socket: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(letterbox_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("letterbox ctl runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The line `ctl units` prints for `unit`, if the agent answers and has it.
pub fn unit_line(socket: &std::path::Path, unit: &str) -> Option<String> {
    ctl(socket, &["units"])?
        .lines()
        .find(|l| l.split_whitespace().next() == Some(unit))
        .map(str::to_string)
}

/// Polls `probe` every 50 ms until it returns something or `limit` has passed.
pub fn wait_for<T>(limit: std::time::Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Polls `condition` until it holds (true) or `limit` has passed (false).
pub fn wait_until(limit: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    wait_for(limit, || condition().then_some(())).is_some()
}

/// The messages in the front's Postfix queue under the agent's state directory: every
/// file of its queues (none once each is delivered and removed).
pub fn postfix_queue_files(state: &std::path::Path) -> Vec<std::path::PathBuf> {
    let spool = state.join("postfix/spool");
    ["incoming", "active", "deferred", "hold", "maildrop"]
        .iter()
        .flat_map(|queue| files_under(&spool.join(queue)))
        .collect()
}

/// Every file under `dir`, at any depth (none if it is missing).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A network namespace with a unique name; deleted on drop (with every link in it), also
/// when the test fails.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// An empty namespace named `lbx-TAG-ID`.
    pub fn new(tag: &str) -> Netns {
        let netns = Netns {
            name: format!("lbx-{tag}-{}", unique_id()),
        };
        run(&["ip", "netns", "add", &netns.name]);
        netns
    }

    /// A namespace with a veth pair inside; also returns the end the agent configures
    /// (its peer stays down, unconfigured, beside it).
    pub fn with_veth(tag: &str) -> (Netns, String) {
        let netns = Netns::new(tag);
        let id = unique_id();
        let (link, peer) = (format!("lb{id}a"), format!("lb{id}b"));
        netns.ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        (netns, link)
    }

    /// `ip -n NAME ARGS`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(
            std::process::Command::new("ip")
                .args(["-n", &self.name])
                .args(args),
        )
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's).
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Netns {
    /// Runs `future` on a thread inside this namespace: what works on the caller's
    /// namespace (net::boxes, net::apply) then works on this one.
    pub fn block_on_inside<F: std::future::Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        let netns = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter the namespace");
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(future)
            })
            .join()
            .unwrap()
        })
    }
}

/// Whether a mail test can run: root, `tools`, trixie's containerd and runc, and, when
/// `needs_image`, the built mail image; else it is skipped, with what is missing.
pub fn mail_parts_present(test: &str, tools: &[&str], needs_image: bool) -> bool {
    if !is_root() {
        skip(test, "needs root (network namespaces, containerd)");
        return false;
    }
    if !tools.iter().all(|tool| installed(test, tool)) {
        return false;
    }
    let [runc, containerd] = trixie_containerd_dirs();
    if !containerd.join("containerd").is_file() || !runc.join("runc").is_file() {
        skip(
            test,
            "trixie's containerd and runc are not in .cache/containerd-trixie (make containerd-trixie fetches them)",
        );
        return false;
    }
    if needs_image && !built_mail_image().join("index.json").is_file() {
        let why = format!(
            "no mail image at {} (make mail-image builds it)",
            built_mail_image().display()
        );
        skip(test, &why);
        return false;
    }
    true
}

/// `letterbox run DIR/letterbox.toml --state DIR/state --socket DIR/control.sock` with
/// containerd and the mail image at `image`, in `netns`'s network namespace only (`ip
/// netns exec` would also give it a fresh /sys, without the cgroup mount runc needs); its
/// stderr (its log) appended to DIR/agent.log.
pub fn start_mail_agent(
    netns: &Netns,
    dir: &std::path::Path,
    image: &std::path::Path,
) -> KillOnDrop {
    start_mail_agent_with_webmail(netns, dir, image, None)
}

/// [`start_mail_agent`], and with the webmail image at `webmail` when given (the webmail
/// then runs unless the file disables it).
pub fn start_mail_agent_with_webmail(
    netns: &Netns,
    dir: &std::path::Path,
    image: &std::path::Path,
    webmail: Option<&std::path::Path>,
) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap();
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", netns.name))
        .arg("--")
        .arg(letterbox_bin())
        .arg("run")
        .arg(dir.join("letterbox.toml"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("control.sock"))
        .arg("--mail-image")
        .arg(image);
    if let Some(webmail) = webmail {
        cmd.arg("--webmail-image").arg(webmail);
    }
    for bin in trixie_containerd_dirs() {
        cmd.arg("--containerd-dir").arg(bin);
    }
    KillOnDrop(
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("letterbox run starts"),
    )
}

/// After a containerd test, whatever is left of it, killed: containerd (which outlives a
/// killed agent, and names its configuration under the test's directory), the shims (which
/// outlive containerd by design and name its socket), and everything they started (the
/// containers' processes outlive their shims). Then the mounts under the test's directory
/// are detached, deepest first.
pub fn clear_containerd_leftovers(socket: &std::path::Path, dir: &std::path::Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let socket = socket.display().to_string();
    let under_dir = format!("{}/", dir.display());
    // (pid, parent) of every process; those of the test, by command line, to start from.
    let mut processes = Vec::new();
    let mut doomed = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let parent = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|ppid| ppid.parse::<i32>().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(&socket) || cmdline.contains(&under_dir) {
            doomed.insert(pid);
        }
        processes.extend(parent.map(|parent| (pid, parent)));
    }
    // Their descendants, to any depth.
    loop {
        let before = doomed.len();
        for (pid, parent) in &processes {
            if doomed.contains(parent) {
                doomed.insert(*pid);
            }
        }
        if doomed.len() == before {
            break;
        }
    }
    for pid in doomed {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let dir = dir.display().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process killed and reaped on drop, so a failing test leaves nothing behind.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's python, which has python3-dkim (the PATH may lead to another).
pub const PYTHON: &str = "/usr/bin/python3";

/// Verifies every DKIM-Signature of the message on stdin with python3-dkim, asking the
/// DNS server at argv[1]; prints one `selector=ok` or `selector=FAIL` per signature.
const DKIM_VERIFY: &str = r#"
import sys, dkim, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = [sys.argv[1]]
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    answer = resolver.resolve(name, "TXT", lifetime=timeout)
    return b"".join(b"".join(r.strings) for r in answer)
message = sys.stdin.buffer.read()
d = dkim.DKIM(message)
signatures = [h for h in d.headers if h[0].lower() == b"dkim-signature"]
for i, (_, value) in enumerate(signatures):
    tags = dict(t.strip().split(b"=", 1) for t in value.split(b";") if b"=" in t)
    ok = d.verify(idx=i, dnsfunc=dnsfunc)
    print(tags[b"s"].decode().strip() + "=" + ("ok" if ok else "FAIL"))
"#;

/// The verdicts of python3-dkim (`selector=ok` or `selector=FAIL`, one per signature) on
/// `message`, verified in `netns` against the DNS server at `dns`; and its stderr.
pub fn dkim_verify(netns: &Netns, dns: &str, message: &[u8]) -> (Vec<String>, String) {
    let mut verify = netns
        .exec(PYTHON)
        .args(["-c", DKIM_VERIFY, dns])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    verify.stdin.take().unwrap().write_all(message).unwrap();
    let out = verify.wait_with_output().unwrap();
    let verdicts = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (verdicts, String::from_utf8_lossy(&out.stderr).into_owned())
}

//! The init agent for real: as PID 1 of new PID, mount and UTS namespaces inside a network
//! namespace with a veth pair, and in `letterbox run` mode, with its console on a pty.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::pid1::{
    addresses, can_enter, can_run, children, config, Console, Dirs, Pid1, PASSWORD,
};
use common::{run_ok, KillOnDrop, Netns, TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// An agent started on a pty console, in a network namespace with a veth end (`link`)
/// for it, with a valid file. Fields drop in order: the agent first, the namespace last.
struct Running<A> {
    agent: A,
    console: Console,
    dirs: Dirs,
    link: String,
    ns: Netns,
}

/// A namespace, directories with a valid file for `hostname` and a console, and the
/// agent that `start` starts on them.
fn started<A>(
    tag: &str,
    hostname: &str,
    start: impl FnOnce(&Netns, &Dirs, &mut Console) -> A,
) -> Running<A> {
    let (ns, link) = Netns::with_veth(&format!("init-{tag}"));
    let dirs = Dirs::new();
    dirs.write_config(&config(hostname, &link, true));
    let mut console = Console::new();
    let agent = start(&ns, &dirs, &mut console);
    Running {
        agent,
        console,
        dirs,
        link,
        ns,
    }
}

/// The agent booted as PID 1 with a valid file for `hostname`.
fn booted(tag: &str, hostname: &str) -> Running<Pid1> {
    started(tag, hostname, |ns, dirs, console| {
        Pid1::boot(ns, dirs, console)
    })
}

/// `booted`, up to its login prompt.
fn booted_to_login(tag: &str, hostname: &str) -> Running<Pid1> {
    let mut lab = booted(tag, hostname);
    lab.console.expect(&format!("{hostname} login: "));
    lab
}

/// The agent in run mode with a valid file for `hostname`; only it holds the pty.
fn run_mode_started(tag: &str, hostname: &str) -> Running<KillOnDrop> {
    started(tag, hostname, |ns, dirs, console| {
        let agent = run_mode(ns, dirs, console);
        console.slave = None;
        agent
    })
}

/// Starts `script` in the background from a shell in the agent's PID namespace: when that
/// shell exits, the process is an orphan, re-parented to the namespace's init.
fn spawn_orphan(init: Pid, script: &str) {
    run_ok(
        Command::new("nsenter")
            .arg("-t")
            .arg(init.to_string())
            .args(["--pid", "sh", "-c", &format!("{script} >/dev/null 2>&1 &")]),
    );
}

/// Asserts that `lines` appear in `text` in this order.
fn assert_in_order(text: &str, lines: &[&str]) {
    let mut at = 0;
    for line in lines {
        let found = text[at..]
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} missing or out of order in:\n{text}"));
        at += found;
    }
}

/// The filesystem types on top of each mount point, from mountinfo(5) text.
fn mounts(mountinfo: &str) -> Vec<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some((fields[4].to_string(), fields[dash + 1].to_string()))
        })
        .collect()
}

fn top_fstype(mounts: &[(String, String)], path: &str) -> Option<String> {
    mounts
        .iter()
        .rev()
        .find(|(p, _)| p == path)
        .map(|(_, t)| t.clone())
}

#[test]
fn pid1_mounts_configures_and_logs_to_the_console() {
    if !can_run("pid1_mounts_configures_and_logs_to_the_console") {
        return;
    }
    let mut lab = booted("m", "lbxmount");

    let boot_log = lab.console.expect("console ready on /proc/self/fd/0");
    // Written once: to stderr (the kernel's console) during boot, and no replay when the
    // console unit takes over the same tty.
    assert_eq!(
        boot_log.matches("mounting pseudo filesystems").count(),
        1,
        "{boot_log}"
    );
    for step in [
        "starting (as PID 1)",
        "mounting pseudo filesystems",
        &format!("reading {}", lab.dirs.provisioning_file().display()),
        "network up: applying 1 interface(s)",
        "starting units",
        "login prompt on /proc/self/fd/0",
    ] {
        assert!(boot_log.contains(step), "{step:?} not in:\n{boot_log}");
    }
    // Kernel-style seconds since boot, the wall clock, the prefix and the level.
    assert!(
        boot_log
            .lines()
            .any(|l| l.starts_with('[')
                && l.contains("Z letterbox: INFO  mounting pseudo filesystems")),
        "{boot_log}"
    );

    // The kernel log has the lines too (as PID 1 the agent writes /dev/kmsg).
    let dmesg = Command::new("dmesg").output().unwrap();
    let kernel_log = String::from_utf8_lossy(&dmesg.stdout);
    let reading = format!(
        "letterbox: reading {}",
        lab.dirs.provisioning_file().display()
    );
    assert!(kernel_log.contains(&reading), "{reading:?} not in dmesg");

    let ours = mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
    let theirs = mounts(
        &std::fs::read_to_string(format!("/proc/{}/mountinfo", lab.agent.host_pid())).unwrap(),
    );
    for (path, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/sys/fs/cgroup", "cgroup2"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/run", "tmpfs"),
        ("/tmp", "tmpfs"),
    ] {
        assert_eq!(
            top_fstype(&theirs, path).as_deref(),
            Some(fstype),
            "{path}: {theirs:?}"
        );
    }
    // The host's /proc came along into the new mount namespace; the agent mounted its own
    // (showing its PID namespace) on top.
    let procs = |m: &[(String, String)]| {
        m.iter()
            .filter(|(p, t)| p == "/proc" && t == "proc")
            .count()
    };
    assert!(procs(&theirs) > procs(&ours), "no new /proc: {theirs:?}");

    let addresses = addresses(&lab.ns, &lab.link);
    assert!(addresses.contains("inet 192.0.2.10/24"), "{addresses}");
    assert!(addresses.contains("inet6 2001:db8::10/64"), "{addresses}");
    assert_eq!(
        std::fs::read_to_string(lab.dirs.root.join("etc/hostname")).unwrap(),
        "lbxmount\n"
    );
    // It holds the password hash: root's only.
    let last_good = std::fs::metadata(lab.dirs.state.join("last-good.toml"))
        .expect("a valid file is kept as the last good configuration");
    assert_eq!(last_good.permissions().mode() & 0o777, 0o600);
}

#[test]
fn console_login_accepts_the_password_and_delays_wrong_ones_longer_each_time() {
    let test = "console_login_accepts_the_password_and_delays_wrong_ones_longer_each_time";
    if !can_run(test) {
        return;
    }
    let mut lab = booted("l", "lbxlogin");

    let mut delays = Vec::new();
    for _ in 0..2 {
        lab.console.login("lbxlogin", "not-the-password");
        let sent = Instant::now();
        let answer = lab.console.expect("Login incorrect");
        delays.push(sent.elapsed());
        assert!(
            !answer.contains("not-the-password"),
            "password echoed: {answer:?}"
        );
    }
    // The schedule's lower bounds (1 s, then 2 s): a loaded machine only adds to them.
    assert!(
        delays[0] >= Duration::from_secs(1) && delays[1] >= Duration::from_secs(2),
        "second failure not slower: {delays:?}"
    );

    // A wrong user name with the right password is refused too.
    lab.console.expect("lbxlogin login: ");
    lab.console.send("root");
    lab.console.expect("Password: ");
    lab.console.send(PASSWORD);
    lab.console.expect("Login incorrect");

    lab.console.shell("lbxlogin");
    let status = lab.console.command("lbxlogin", "status");
    for want in [
        "hostname:  lbxlogin.example.org",
        &format!("config:    {}", lab.dirs.provisioning_file().display()),
        "console      running",
        "192.0.2.10/24 (letterbox)",
        "2001:db8::10/64 (letterbox)",
        "default via 192.0.2.1 (letterbox)",
    ] {
        assert!(status.contains(want), "{want:?} not in:\n{status}");
    }
    let unknown = lab.console.command("lbxlogin", "frobnicate");
    assert!(
        unknown.contains("error: unrecognized subcommand 'frobnicate'"),
        "{unknown}"
    );
    let net = lab.console.command("lbxlogin", "net");
    assert!(net.contains("no changes"), "{net}");
    let logs = lab.console.command("lbxlogin", "logs");
    assert!(logs.contains("console: admin logged in"), "{logs}");
    assert!(
        !logs.contains(PASSWORD) && !logs.contains("not-the-password"),
        "{logs}"
    );
    lab.console.send("exit");
    lab.console.expect("lbxlogin login: ");
}

#[test]
fn sigterm_stops_the_units_and_powers_off() {
    if !can_run("sigterm_stops_the_units_and_powers_off") {
        return;
    }
    let mut lab = booted_to_login("t", "lbxterm");

    kill(lab.agent.host_pid(), Signal::SIGTERM).unwrap();
    let shutdown = lab.console.expect("powering off");
    assert_in_order(
        &shutdown,
        &[
            "SIGTERM received",
            "shutting down: stopping units",
            "stopping unit console",
            "letterbox is shutting down",
            "unit console stopped",
            "powering off",
        ],
    );
    // reboot(2) with POWER_OFF from a PID namespace's init ends the namespace: the kernel
    // kills the init with SIGINT.
    assert_eq!(lab.agent.wait().signal(), Some(Signal::SIGINT as i32));
}

#[test]
fn reboot_and_poweroff_from_the_shell_end_the_namespace() {
    if !can_run("reboot_and_poweroff_from_the_shell_end_the_namespace") {
        return;
    }
    let (ns, link) = Netns::with_veth("init-r");
    let dirs = Dirs::new();
    dirs.write_config(&config("lbxboot", &link, true));
    for (command, signal) in [("reboot", Signal::SIGHUP), ("poweroff", Signal::SIGINT)] {
        let mut console = Console::new();
        let agent = Pid1::boot(&ns, &dirs, &console);
        console.shell("lbxboot");
        console.send(command);
        console.expect("requested from the console");
        console.expect("unit console stopped");
        assert_eq!(agent.wait().signal(), Some(signal as i32), "{command}");
    }
}

#[test]
fn broken_file_shows_its_errors_and_keeps_the_last_good_login() {
    if !can_run("broken_file_shows_its_errors_and_keeps_the_last_good_login") {
        return;
    }
    let (ns, link) = Netns::with_veth("init-b");
    let dirs = Dirs::new();
    dirs.write_config(&config("lbxgood", &link, true));
    {
        // A good boot leaves the last good copy.
        let mut console = Console::new();
        let agent = Pid1::boot(&ns, &dirs, &console);
        console.expect("lbxgood login: ");
        kill(agent.host_pid(), Signal::SIGTERM).unwrap();
        agent.wait();
    }
    dirs.write_config("version = 1\n\n[system]\nhostname = 42\ndomain = \"example.org\"\n");
    let mut console = Console::new();
    let _agent = Pid1::boot(&ns, &dirs, &console);
    let boot_log = console.expect("lbxgood login: ");
    let location = format!("{}:4:12", dirs.provisioning_file().display());
    assert!(
        boot_log.contains(&location),
        "{location} not in:\n{boot_log}"
    );
    assert!(
        boot_log.contains("using the last good configuration"),
        "{boot_log}"
    );
    assert!(
        boot_log.contains("letterbox.toml has errors (logged above; `check` shows them again)"),
        "{boot_log}"
    );

    console.send("admin");
    console.expect("Password: ");
    console.send(PASSWORD);
    console.expect("lbxgood# ");
    let status = console.command("lbxgood", "status");
    assert!(
        status.contains("config:    last good configuration"),
        "{status}"
    );
    let check = console.command("lbxgood", "check");
    assert!(check.contains(&location), "{check}");
    assert!(
        check.contains("still running the last good configuration"),
        "{check}"
    );
}

#[test]
fn without_any_good_file_the_console_explains_and_check_recovers() {
    if !can_run("without_any_good_file_the_console_explains_and_check_recovers") {
        return;
    }
    let (ns, link) = Netns::with_veth("init-n");
    let dirs = Dirs::new();
    dirs.write_config("version = 1\n[system\n");
    let mut console = Console::new();
    let _agent = Pid1::boot(&ns, &dirs, &console);
    let explained = console.expect("letterbox (no login)> ");
    assert!(
        explained.contains("letterbox has no valid configuration"),
        "{explained}"
    );
    assert!(
        explained.contains(&format!("{}:2:", dirs.provisioning_file().display())),
        "{explained}"
    );
    console.send("status");
    console.expect("only `check` works before login");
    console.expect("letterbox (no login)> ");

    // A valid file without a password hash: the console says how to set one.
    dirs.write_config(&config("lbxfixed", &link, false));
    console.send("check");
    let told = console.expect("letterbox (no login)> ");
    assert!(told.contains("ok: lbxfixed.example.org"), "{told}");
    assert!(told.contains("letterbox passwd"), "{told}");

    dirs.write_config(&config("lbxfixed", &link, true));
    console.send("check");
    console.shell("lbxfixed");
}

#[test]
fn run_mode_serves_the_console_on_the_host_and_exits() {
    if !can_run("run_mode_serves_the_console_on_the_host_and_exits") {
        return;
    }
    // Only the agent holds the pty: the log lines are its own.
    let mut lab = run_mode_started("h", "lbxhost");
    let boot_log = lab.console.expect(&format!(
        "console ready on {}",
        lab.console.slave_path.display()
    ));
    assert!(boot_log.contains("run mode on this host"), "{boot_log}");
    assert!(
        !boot_log.contains("mounting pseudo filesystems"),
        "{boot_log}"
    );

    lab.console.shell("lbxhost");
    let status = lab.console.command("lbxhost", "status");
    assert!(status.contains("192.0.2.10/24 (letterbox)"), "{status}");
    assert!(status.contains("2001:db8::10/64 (letterbox)"), "{status}");
    // Run mode writes the system files under STATE/root, not the host's /etc.
    assert_eq!(
        std::fs::read_to_string(lab.dirs.state.join("root/etc/hostname")).unwrap(),
        "lbxhost\n"
    );
    lab.console.send("poweroff");
    let (status, stderr) = wait_for_exit(&mut lab.agent);
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        stderr.contains("run mode: exiting instead of a power-off"),
        "{stderr}"
    );
}

#[test]
fn console_dns_reload_serves_an_edited_file_without_a_restart() {
    if !can_run("console_dns_reload_serves_an_edited_file_without_a_restart") {
        return;
    }
    let mut lab = run_mode_started("d", "lbxdns");
    let base = std::fs::read_to_string(lab.dirs.provisioning_file()).unwrap();
    lab.console.shell("lbxdns");

    let serial = |text: &str| -> u32 {
        let at = text
            .find("serving serial ")
            .unwrap_or_else(|| panic!("no serial in {text:?}"));
        text[at + 15..]
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no serial number in {text:?}"))
    };
    // The DNS unit starts beside the console; ask until it serves.
    let mut reply = String::new();
    let before = common::wait_for(TIMEOUT, || {
        reply = lab.console.command("lbxdns", "dns");
        reply.contains("serving serial").then(|| serial(&reply))
    })
    .unwrap_or_else(|| panic!("DNS never started: {reply}"));

    let hash = letterbox::passwd::hash("box").unwrap();
    lab.dirs.write_config(&format!(
        "{base}\n[[account]]\nname = \"carol\"\npassword_hash = \"{hash}\"\n"
    ));
    let reply = lab.console.command("lbxdns", "dns reload");
    let after = serial(&reply);
    assert!(
        after > before,
        "serial {after} should exceed {before}: {reply}"
    );
    let mx = lab
        .ns
        .exec("dig")
        .args(["+short", "+time=2", "@192.0.2.10"])
        .args(["carol.example.org", "MX"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&mx.stdout).trim(),
        "10 lbxdns.example.org."
    );
}

#[test]
fn pid1_reaps_orphans() {
    if !can_enter("pid1_reaps_orphans") {
        return;
    }
    let lab = booted_to_login("o", "lbxorphan");
    let init = lab.agent.host_pid();

    // A shell in the agent's PID namespace leaves a `sleep` behind: the orphan is
    // re-parented to the namespace's init, which must collect it when it exits. It
    // sleeps until the test ends it, so it cannot be gone before it is looked for.
    spawn_orphan(init, "sleep 3600");
    let comm = |pid: &Pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let orphans = || -> Vec<Pid> {
        children(init)
            .into_iter()
            .filter(|pid| comm(pid).trim() == "sleep")
            .collect()
    };
    // The shell that started it exits, and the kernel re-parents it, a moment later.
    let adopted = common::wait_for(TIMEOUT, || Some(orphans()).filter(|o| o.len() == 1))
        .expect("the orphan was not re-parented to the agent");
    for pid in &adopted {
        kill(*pid, Signal::SIGKILL).unwrap();
    }
    // A zombie stays in the parent's children until reaped.
    assert!(
        common::wait_until(TIMEOUT, || orphans().is_empty()),
        "orphan {adopted:?} never reaped"
    );
}

#[test]
fn run_mode_exits_cleanly_on_sigterm() {
    if !can_run("run_mode_exits_cleanly_on_sigterm") {
        return;
    }
    let mut lab = run_mode_started("s", "lbxsig");
    lab.console.expect("lbxsig login: ");
    kill(Pid::from_raw(lab.agent.id() as i32), Signal::SIGTERM).unwrap();
    let (status, stderr) = wait_for_exit(&mut lab.agent);
    assert!(status.success(), "{status:?}\n{stderr}");
    let at = |line: &str| {
        stderr
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} not in:\n{stderr}"))
    };
    assert!(
        at("SIGTERM received") < at("unit console stopped"),
        "{stderr}"
    );
    assert!(
        at("unit console stopped") < at("run mode: exiting"),
        "{stderr}"
    );
}

/// `letterbox run` in the test's network namespace (`ip netns exec` execs it: its pid is
/// the agent's), with its console on the pty and its log on stderr.
fn run_mode(ns: &Netns, dirs: &Dirs, console: &Console) -> KillOnDrop {
    let agent = ns
        .exec(common::letterbox_bin())
        .arg("run")
        .arg(dirs.provisioning_file())
        .arg("--state")
        .arg(&dirs.state)
        .arg("--console")
        .arg(&console.slave_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    KillOnDrop(agent)
}

/// Waits for a run-mode agent to exit; its status and stderr.
fn wait_for_exit(agent: &mut Child) -> (ExitStatus, String) {
    let status =
        common::wait_for(TIMEOUT, || agent.try_wait().unwrap()).expect("run mode did not exit");
    let mut stderr = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

#[test]
fn shutdown_kills_what_ignores_sigterm_and_reaps_it_before_powering_off() {
    let test = "shutdown_kills_what_ignores_sigterm_and_reaps_it_before_powering_off";
    if !can_enter(test) {
        return;
    }
    let mut lab = booted_to_login("k", "lbxkill");
    let init = lab.agent.host_pid();
    // An orphan in the agent's PID namespace that ignores SIGTERM.
    spawn_orphan(init, "sh -c 'trap \"\" TERM; while :; do sleep 1; done'");
    // Only once the agent has adopted it and it has set its trap is it a real test.
    let ignores_sigterm = |pid: &Pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (Signal::SIGTERM as u64 - 1)) != 0)
    };
    assert!(
        common::wait_until(TIMEOUT, || children(init).iter().any(ignores_sigterm)),
        "no orphan ignoring SIGTERM"
    );
    kill(init, Signal::SIGTERM).unwrap();
    let shutdown = lab.console.expect("powering off");
    assert_in_order(
        &shutdown,
        &[
            "sent SIGTERM to the remaining processes",
            "sending SIGKILL",
            "powering off",
        ],
    );
    assert!(
        !shutdown.contains("processes left after SIGKILL"),
        "{shutdown}"
    );
    assert_eq!(lab.agent.wait().signal(), Some(Signal::SIGINT as i32));
}

#[test]
fn pid1_waits_for_an_interface_that_appears_late_and_configures_it() {
    let test = "pid1_waits_for_an_interface_that_appears_late_and_configures_it";
    if !can_run(test) {
        return;
    }
    // Like the Pi 3's USB Ethernet: the file's interface does not exist when boot starts.
    let ns = Netns::new("init-late");
    let id = common::unique_id();
    let (link, peer) = (format!("lb{id}a"), format!("lb{id}b"));
    let dirs = Dirs::new();
    dirs.write_config(&config("lbxlate", &link, true));
    let mut console = Console::new();
    let _agent = Pid1::boot(&ns, &dirs, &console);
    console.expect(&format!("network: waiting up to 20s for {link} to appear"));
    ns.ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
    console.expect(&format!("network: {link} appeared"));
    let boot_log = console.expect("lbxlate login: ");
    assert!(!boot_log.contains("failed interfaces"), "{boot_log}");
    let addresses = addresses(&ns, &link);
    assert!(addresses.contains("inet 192.0.2.10/24"), "{addresses}");
    assert!(addresses.contains("inet6 2001:db8::10/64"), "{addresses}");
}

#[test]
fn pid1_gives_the_login_even_when_an_interface_never_appears() {
    let test = "pid1_gives_the_login_even_when_an_interface_never_appears";
    if !can_run(test) {
        return;
    }
    // A USB adapter that is not plugged in: the file names a link that never comes.
    let ns = Netns::new("init-never");
    let link = format!("lb{}n", common::unique_id());
    let dirs = Dirs::new();
    dirs.write_config(&config("lbxnever", &link, true));
    let mut console = Console::new();
    let _agent = Pid1::boot(&ns, &dirs, &console);
    console.expect(&format!("network: waiting up to 20s for {link} to appear"));
    let waiting = Instant::now();
    console.expect(&format!("network: {link} did not appear within 20s"));
    // The whole limit, less the moment the line took to reach the test.
    assert!(
        waiting.elapsed() >= Duration::from_secs(18),
        "gave up after {:?}",
        waiting.elapsed()
    );
    console.expect("lbxnever login: ");
    console.send("admin");
    console.expect("Password: ");
    console.send(PASSWORD);
    console.expect("lbxnever# ");
}

/// `letterbox ctl --socket SOCKET ARGS` against the agent; its stdout.
fn ctl(dirs: &Dirs, args: &[&str]) -> String {
    run_ok(
        Command::new(common::letterbox_bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&dirs.socket)
            .args(args),
    )
}

/// Logs in with a wrong password; how long "Login incorrect" took.
fn fail_login(console: &mut Console, hostname: &str) -> Duration {
    console.login(hostname, "not-the-password");
    let sent = Instant::now();
    console.expect("Login incorrect");
    sent.elapsed()
}

#[test]
fn the_login_delay_keeps_growing_across_a_console_restart() {
    let test = "the_login_delay_keeps_growing_across_a_console_restart";
    if !can_run(test) {
        return;
    }
    let mut lab = booted("g", "lbxgrow");
    let before = [
        fail_login(&mut lab.console, "lbxgrow"),
        fail_login(&mut lab.console, "lbxgrow"),
    ];
    lab.console.expect("lbxgrow login: ");
    // As when a USB-serial adapter's EIO ends the unit: a new run of it.
    assert_eq!(
        ctl(&lab.dirs, &["restart", "console"]),
        "restarting unit console\n"
    );
    // A restart is not a shutdown, and the console says which.
    let notice = lab.console.expect("console ready on /proc/self/fd/0");
    assert!(notice.contains("the console is restarting"), "{notice}");
    assert!(!notice.contains("shutting down"), "{notice}");
    let after = fail_login(&mut lab.console, "lbxgrow");
    // The schedule is 1 s, 2 s, then 4 s; starting over would make the third 1 s. Lower
    // bounds only: a loaded machine adds to each delay, never takes from it.
    assert!(
        before[0] >= Duration::from_secs(1) && before[1] >= Duration::from_secs(2),
        "{before:?}"
    );
    assert!(
        after >= Duration::from_secs(4),
        "the delay started over after the restart: {before:?} then {after:?}"
    );
}

#[test]
fn an_idle_admin_shell_is_logged_out_and_typing_keeps_it_in() {
    let test = "an_idle_admin_shell_is_logged_out_and_typing_keeps_it_in";
    if !can_run(test) {
        return;
    }
    let idle_limit = Duration::from_secs(4);
    let (ns, link) = Netns::with_veth("init-i");
    let dirs = Dirs::new();
    // config() ends inside [console].
    let file = format!("{}idle_timeout = \"4s\"\n", config("lbxidle", &link, true));
    dirs.write_config(&file);
    let mut console = Console::new();
    let _agent = Pid1::boot(&ns, &dirs, &console);
    console.shell("lbxidle");

    // One key a second, for longer than the limit in all: each key starts the wait over.
    let typing = Instant::now();
    for key in "status".chars() {
        std::thread::sleep(Duration::from_secs(1));
        console.type_keys(&key.to_string());
    }
    std::thread::sleep(Duration::from_secs(1));
    console.send("");
    let status = console.expect("lbxidle# ");
    assert!(typing.elapsed() > idle_limit, "typed too fast to tell");
    assert!(
        status.contains("hostname:  lbxidle.example.org"),
        "{status}"
    );
    assert!(!status.contains("logged out"), "{status}");

    // Then no key at all.
    let idle = Instant::now();
    let out = console.expect("lbxidle login: ");
    assert!(out.contains("no key for 4s: logged out"), "{out}");
    // Less the moment the prompt took to reach the test.
    assert!(
        idle.elapsed() >= idle_limit - Duration::from_millis(500),
        "logged out after {:?}",
        idle.elapsed()
    );
}

#[test]
fn a_console_that_hangs_up_is_reopened_with_its_log_lines() {
    let test = "a_console_that_hangs_up_is_reopened_with_its_log_lines";
    if !can_run(test) {
        return;
    }
    let mut lab = booted_to_login("u", "lbxhangup");
    lab.console.hang_up();
    // A log line, written after the unit opened the device again: it reaches the console
    // only through a log handle opened with it (the old one fails with EIO).
    lab.console.expect("console ready on /proc/self/fd/0");
    lab.console.shell("lbxhangup");
}

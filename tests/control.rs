//! The control socket, with the agent as PID 1: `letterbox ctl` lists, restarts and shows
//! the logs of units, gives the same answers as the console, refuses a client that is not
//! root, and no bad client can hold up the agent, its DNS or its console.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pid1::{can_run, config, Console, Dirs, Pid1};
use common::{Netns, TIMEOUT};

/// The agent as PID 1, its DNS answering (its console's login prompt not yet read).
struct Lab {
    console: Console,
    dirs: Dirs,
    ns: Netns,
    _agent: Pid1,
}

const HOST: &str = "lbxctl";

impl Lab {
    fn boot(tag: &str) -> Lab {
        let (ns, link) = Netns::with_veth(tag);
        let dirs = Dirs::new();
        dirs.write_config(&config(HOST, &link, true));
        let console = Console::new();
        let agent = Pid1::boot(&ns, &dirs, &console);
        let lab = Lab {
            console,
            dirs,
            ns,
            _agent: agent,
        };
        assert!(
            common::wait_until(TIMEOUT, || lab.dig_answers()),
            "the agent's DNS never answered"
        );
        lab
    }

    /// `letterbox ctl --socket ... ARGS` as root.
    fn ctl(&self, args: &[&str]) -> Output {
        ctl_command(&common::letterbox_bin(), &self.dirs.socket, args)
            .output()
            .expect("letterbox ctl runs")
    }

    /// `ctl` that must succeed; its stdout.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn dig_answers(&self) -> bool {
        dig(&self.ns)
    }

    /// What the console printed for `command`: without the echoed line, the prompt and
    /// the agent's log lines, which the console shows as they come.
    fn console_reply(&mut self, command: &str) -> String {
        let text = self.console.command(HOST, command).replace("\r\n", "\n");
        let text = text.strip_suffix(&format!("{HOST}# ")).unwrap();
        let (_, reply) = text
            .split_once(&format!("{command}\n"))
            .unwrap_or_else(|| panic!("{command:?} not echoed in {text:?}"));
        reply
            .split_inclusive('\n')
            .filter(|line| !is_log_line(line))
            .collect()
    }
}

/// A line the agent logged: `[   12.345678] ... letterbox: LEVEL ...`.
fn is_log_line(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(stamp, _)| stamp.trim().parse::<f64>().is_ok())
}

fn ctl_command(bin: &std::path::Path, socket: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("ctl").arg("--socket").arg(socket).args(args);
    cmd
}

/// One `dig` for the zone's SOA against the agent; whether it got an answer.
fn dig(ns: &Netns) -> bool {
    ns.exec("dig")
        .args(["@192.0.2.10", "+short", "+time=1", "+tries=1"])
        .args(["example.org", "SOA"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

fn can_run_ctl(test: &str) -> bool {
    can_run(test) && common::installed(test, "dig")
}

/// Numbers (uptimes, pids) change between two reports; the rest must not.
fn without_numbers(text: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            out.push(c);
            in_number = false;
        }
    }
    out
}

#[test]
fn units_logs_status_and_a_dns_restart_that_keeps_answering() {
    let test = "units_logs_status_and_a_dns_restart_that_keeps_answering";
    if !can_run_ctl(test) {
        return;
    }
    let mut lab = Lab::boot("ctl-u");

    let units = lab.ctl_ok(&["units"]);
    for unit in ["console", "control", "dns"] {
        assert!(
            units
                .lines()
                .any(|l| l.split_whitespace().next() == Some(unit) && l.contains("running")),
            "{unit} not running in:\n{units}"
        );
    }
    let logs = lab.ctl_ok(&["logs", "dns"]);
    assert!(
        logs.contains("dns: serving example.org on 192.0.2.10:53 (UDP and TCP)"),
        "{logs}"
    );
    assert!(
        !logs.contains("console ready"),
        "another unit's line:\n{logs}"
    );

    lab.console.shell(HOST);
    let on_console = lab.console_reply("status");
    let on_socket = lab.ctl_ok(&["status"]);
    assert!(
        on_socket.contains("hostname:  lbxctl.example.org"),
        "{on_socket}"
    );
    assert_eq!(without_numbers(&on_console), without_numbers(&on_socket));

    // dig in two staggered loops, so that a query lost at the moment of the restart
    // (its 1s timeout) does not hide the answers around it.
    let answers = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..2)
        .map(|n| {
            let (answers, stop, ns) = (answers.clone(), stop.clone(), lab.ns.name.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100 * n));
                let ns = Netns { name: ns };
                while !stop.load(Ordering::Relaxed) {
                    if dig(&ns) {
                        answers.lock().unwrap().push(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::mem::forget(ns); // the lab owns the namespace
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let restarted = Instant::now();
    assert_eq!(lab.ctl_ok(&["restart", "dns"]), "restarting unit dns\n");
    assert!(
        common::wait_until(TIMEOUT, || {
            lab.ctl_ok(&["logs", "dns"])
                .matches("DNS serving serial")
                .count()
                == 2
        }),
        "DNS was not started again:\n{}",
        lab.ctl_ok(&["logs", "dns"])
    );
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    let first_after = answers.iter().find(|&&t| t > restarted).copied();
    let waited = first_after.map(|t| t - restarted);
    assert!(
        waited.is_some_and(|w| w <= Duration::from_secs(1)),
        "first answer after the restart came after {waited:?}"
    );
    let logs = lab.ctl_ok(&["logs", "dns"]);
    assert!(logs.contains("restarting unit dns"), "{logs}");
}

#[test]
fn console_and_socket_give_the_same_help_and_the_same_errors() {
    let test = "console_and_socket_give_the_same_help_and_the_same_errors";
    if !can_run_ctl(test) {
        return;
    }
    let mut lab = Lab::boot("ctl-h");
    lab.console.shell(HOST);

    let help = lab.ctl_ok(&["help"]);
    assert!(
        help.contains("restart   Stop a unit and start it again"),
        "{help}"
    );
    assert_eq!(lab.console_reply("help"), help);

    let unknown = lab.ctl(&["frobnicate"]);
    assert!(!unknown.status.success());
    let error = String::from_utf8(unknown.stderr).unwrap();
    assert!(
        error.starts_with("error: unrecognized subcommand 'frobnicate'"),
        "{error}"
    );
    assert_eq!(lab.console_reply("frobnicate"), error);

    let no_unit = lab.ctl(&["restart", "nosuch"]);
    assert!(!no_unit.status.success());
    let error = String::from_utf8(no_unit.stderr).unwrap();
    assert_eq!(
        error,
        "error: no unit named `nosuch`; expected one of: console, control, clock, dns\n"
    );
    assert_eq!(lab.console_reply("restart nosuch"), error);
}

#[test]
fn a_client_that_is_not_root_is_refused() {
    let test = "a_client_that_is_not_root_is_refused";
    if !can_run_ctl(test) {
        return;
    }
    let lab = Lab::boot("ctl-r");
    let dir = lab.dirs.socket.parent().unwrap();
    // nobody may run a copy of the binary in the socket's directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("letterbox");
    std::fs::copy(common::letterbox_bin(), &bin).unwrap();
    let as_nobody = || {
        let mut cmd = ctl_command(&bin, &lab.dirs.socket, &["status"]);
        cmd.uid(65534).gid(65534);
        cmd.output().unwrap()
    };

    let mode = std::fs::metadata(&lab.dirs.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let denied = as_nobody();
    assert!(!denied.status.success());
    let why = String::from_utf8_lossy(&denied.stderr);
    assert!(why.contains("Permission denied"), "{why}");

    // Past a socket opened up by mistake, SO_PEERCRED still refuses.
    std::fs::set_permissions(&lab.dirs.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = as_nobody();
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "error: refused: the control socket takes commands from root only (you are uid 65534)\n"
    );
    assert!(lab
        .ctl_ok(&["status"])
        .contains("hostname:  lbxctl.example.org"));
}

/// Sends raw bytes and reads the whole reply.
fn exchange(socket: &std::path::Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    // A request longer than the agent reads may meet a closed socket: that is its answer.
    let _ = stream.write_all(request);
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

#[test]
fn bad_clients_never_block_the_agent_its_dns_or_its_console() {
    let test = "bad_clients_never_block_the_agent_its_dns_or_its_console";
    if !can_run_ctl(test) {
        return;
    }
    let mut lab = Lab::boot("ctl-b");
    let socket = lab.dirs.socket.clone();

    let garbage = exchange(&socket, b"hello\n");
    assert!(
        garbage.starts_with(r#"{"ok":false,"output":"error: malformed request"#),
        "{garbage}"
    );
    let oversized = exchange(&socket, &vec![b'x'; 100_000]);
    assert_eq!(
        oversized,
        "{\"ok\":false,\"output\":\"error: request over 65536 bytes; expected one short JSON line\\n\"}\n"
    );
    // Gone mid-request: nothing to answer, nothing held.
    let mut gone = UnixStream::connect(&socket).unwrap();
    gone.write_all(br#"{"command": ["sta"#).unwrap();
    drop(gone);

    // A half-sent request and 200 clients that send nothing, all held open.
    let started = Instant::now();
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(br#"{"command": ["sta"#).unwrap();
    let idle: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    assert!(lab.dig_answers(), "DNS stopped answering");
    lab.console.shell(HOST);
    let status = lab.console_reply("status");
    assert!(status.contains("dns "), "{status}");
    // The socket itself answers at once: the command, or that it is busy.
    let crowded = lab.ctl(&["units"]);
    let said = String::from_utf8_lossy(if crowded.status.success() {
        &crowded.stdout
    } else {
        &crowded.stderr
    })
    .to_string();
    assert!(
        said.contains("dns ") || said.contains("the agent is busy with 32 other clients"),
        "{said}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held up for {:?}",
        started.elapsed()
    );

    half.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reply = String::new();
    half.read_to_string(&mut reply).unwrap();
    assert_eq!(
        reply,
        "{\"ok\":false,\"output\":\"error: no complete request within 5s; expected one JSON line\\n\"}\n"
    );
    drop(idle);
    assert!(
        common::wait_until(TIMEOUT, || lab.ctl(&["units"]).status.success()),
        "the socket did not recover"
    );
    assert!(lab.dig_answers());
}

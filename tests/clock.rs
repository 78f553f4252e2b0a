//! The clock against a real NTP server: Debian's chronyd, in a network namespace of its own,
//! serving its (the host's) clock with `local stratum 8` and never setting it (`-x`).
//!
//! The clock kept here is a test's own ([`TestClock`]): CLOCK_REALTIME belongs to no
//! namespace, so setting the real one would set the host's. The appliance's setter runs as
//! PID 1 under QEMU.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{KillOnDrop, Netns, TIMEOUT};
use letterbox::clock::{self, saved, Clock, ClockError, Correction, Offset, Restore, RestoredFrom};

/// A clock that runs at the host's rate from wherever it was last set; it starts in 1970,
/// as the Pi does.
struct TestClock {
    set: Mutex<(SystemTime, Instant)>,
}

impl TestClock {
    fn at(time: SystemTime) -> TestClock {
        TestClock {
            set: Mutex::new((time, Instant::now())),
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        let (time, at) = *self.set.lock().unwrap();
        time + at.elapsed()
    }

    fn step_to(&self, to: SystemTime) -> Result<(), ClockError> {
        *self.set.lock().unwrap() = (to, Instant::now());
        Ok(())
    }

    fn correct(&self, offset: Offset) -> Result<Correction, ClockError> {
        self.step_to(offset.apply(self.now()))?;
        Ok(Correction::for_offset(offset))
    }
}

/// How far apart two times are, either way.
fn apart(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}

/// chronyd serving on 127.0.0.1:123 in its own namespace; stopped on drop.
struct NtpServer {
    netns: Netns,
    _chronyd: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl NtpServer {
    fn start(test: &str) -> Option<NtpServer> {
        if !common::is_root() {
            common::skip(test, "needs root for a network namespace and port 123");
            return None;
        }
        if !common::trixie_chronyd().is_file() {
            common::skip(
                test,
                "trixie's chronyd is not in .cache/chrony-trixie (make chrony-trixie fetches it)",
            );
            return None;
        }
        let netns = Netns::new("ntp");
        netns.ip(&["link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "local stratum 8\nallow all\nport 123\ncmdport 0\npidfile {}\n",
                dir.path().join("chronyd.pid").display()
            ),
        )
        .unwrap();
        // -x: chronyd never touches the clock it serves (the host's).
        let chronyd = netns
            .exec(common::trixie_chronyd())
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chronyd starts");
        Some(NtpServer {
            netns,
            _chronyd: KillOnDrop(chronyd),
            _dir: dir,
        })
    }

    fn servers() -> Vec<String> {
        vec!["127.0.0.1".to_string()]
    }

    /// Waits until chronyd answers, then synchronises `clock` from it.
    fn synchronise(&self, clock: &TestClock) -> (clock::Synced, Correction) {
        let started = Instant::now();
        self.netns.block_on_inside(async {
            loop {
                match clock::ask(&Self::servers(), clock, clock::QUERY_TIMEOUT).await {
                    Ok(_) => break,
                    Err(_) if started.elapsed() < TIMEOUT => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("chronyd never answered: {e}"),
                }
            }
            clock::synchronise(&Self::servers(), clock, clock::QUERY_TIMEOUT)
                .await
                .expect("chronyd answers")
        })
    }
}

#[test]
fn an_sntp_server_sets_a_clock_from_1970_to_within_a_second() {
    let test = "an_sntp_server_sets_a_clock_from_1970_to_within_a_second";
    let Some(server) = NtpServer::start(test) else {
        return;
    };
    let clock = TestClock::at(UNIX_EPOCH);
    let (synced, correction) = server.synchronise(&clock);

    // chronyd serves the host's clock.
    let off = apart(clock.now(), SystemTime::now());
    assert!(off < Duration::from_secs(1), "the clock is {off:?} off");
    assert_eq!(correction, Correction::Stepped);
    let expected = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let measured = Duration::from_micros(synced.offset.as_micros() as u64);
    assert!(
        apart(UNIX_EPOCH + measured, UNIX_EPOCH + expected) < Duration::from_secs(1),
        "offset {} for a clock in 1970",
        synced.offset
    );
    assert_eq!(synced.address, "127.0.0.1:123".parse().unwrap());

    // A second round finds it right, and only slews.
    let (again, correction) = server.synchronise(&clock);
    assert!(
        again.offset.abs() < Offset::from_micros(100_000),
        "{}",
        again.offset
    );
    assert_eq!(correction, Correction::Slewed);
}

#[test]
fn a_second_boot_with_no_ntp_reachable_starts_no_earlier_than_the_saved_time() {
    let test = "a_second_boot_with_no_ntp_reachable_starts_no_earlier_than_the_saved_time";
    let Some(server) = NtpServer::start(test) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let built = UNIX_EPOCH + Duration::from_secs(1_735_689_600); // 2025-01-01

    // First boot: from the build time, then from the server; the time saved at shutdown.
    let first = TestClock::at(UNIX_EPOCH);
    let restored = clock::restore(state.path(), Some(built), &first).unwrap();
    assert!(
        matches!(restored, Restore::SetForward { to, from: RestoredFrom::BuildTime, .. } if to == built),
        "{restored:?}"
    );
    server.synchronise(&first);
    saved::save(state.path(), first.now()).unwrap();
    let saved_at = saved::load(state.path()).unwrap().unwrap();
    assert!(saved_at > built + Duration::from_secs(365 * 86_400));

    // Second boot: the server is gone.
    let netns = server.netns.name.clone();
    drop(server);
    let second = TestClock::at(UNIX_EPOCH);
    let restored = clock::restore(state.path(), Some(built), &second).unwrap();
    assert!(
        matches!(
            restored,
            Restore::SetForward {
                from: RestoredFrom::SavedTime,
                ..
            }
        ),
        "{restored:?}"
    );
    assert!(second.now() >= saved_at, "started before the saved time");
    let unreachable = Netns::new("nontp");
    unreachable.ip(&["link", "set", "lo", "up"]);
    let result = unreachable.block_on_inside(clock::synchronise(
        &NtpServer::servers(),
        &second,
        Duration::from_secs(1),
    ));
    let e = result.expect_err(&format!("no NTP server in {netns} any more"));
    assert!(
        e.to_string()
            .starts_with("no NTP server answered (127.0.0.1: "),
        "{e}"
    );
    assert!(
        second.now() >= saved_at,
        "the failed sync moved the clock back"
    );
}

#[test]
fn the_build_time_wins_over_an_older_saved_time_and_a_later_clock_is_left_alone() {
    let state = tempfile::tempdir().unwrap();
    let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
    saved::save(state.path(), at(1_700_000_000)).unwrap();

    let clock = TestClock::at(UNIX_EPOCH);
    let done = clock::restore(state.path(), Some(at(1_750_000_000)), &clock).unwrap();
    assert!(matches!(
        done,
        Restore::SetForward {
            from: RestoredFrom::BuildTime,
            ..
        }
    ));
    assert!(clock.now() >= at(1_750_000_000));

    // A clock already past both (a board with a real-time clock) never goes back.
    let ahead = TestClock::at(at(1_800_000_000));
    let done = clock::restore(state.path(), Some(at(1_750_000_000)), &ahead).unwrap();
    assert!(matches!(done, Restore::AlreadyLater { .. }), "{done:?}");
    assert!(ahead.now() >= at(1_800_000_000));
}

#[test]
fn a_corrupt_saved_time_still_restores_the_build_time_and_says_why() {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(saved::path(state.path()), "garbage").unwrap();
    let built = UNIX_EPOCH + Duration::from_secs(1_735_689_600);
    let clock = TestClock::at(UNIX_EPOCH);
    let done = clock::restore(state.path(), Some(built), &clock).unwrap();
    let text = done.to_string();
    assert!(
        text.starts_with("set to 2025-01-01T00:00:00Z, the image's build time ("),
        "{text}"
    );
    assert!(text.contains("is corrupt"), "{text}");
    assert!(clock.now() >= built);
}

#[test]
fn no_saved_time_and_no_build_time_leaves_the_clock_alone() {
    let clock = TestClock::at(UNIX_EPOCH);
    let done = clock::restore(Path::new("/nonexistent/letterbox-state"), None, &clock).unwrap();
    assert!(matches!(done, Restore::AlreadyLater { .. }), "{done:?}");
    assert!(clock.now() < UNIX_EPOCH + Duration::from_secs(60));
}

#[test]
fn run_mode_measures_the_hosts_clock_against_the_server_and_never_saves_it() {
    let test = "run_mode_measures_the_hosts_clock_against_the_server_and_never_saves_it";
    let Some(server) = NtpServer::start(test) else {
        return;
    };
    let id = common::unique_id();
    let (link, peer) = (format!("lb{id}a"), format!("lb{id}b"));
    server
        .netns
        .ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("letterbox.toml");
    std::fs::write(
        &file,
        format!(
            "version = 1\n\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\
             ntp = [\"127.0.0.1\"]\n\n[[interface]]\nname = \"{link}\"\nipv4 = [\"192.0.2.10/24\"]\n"
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let socket = dir.path().join("control.sock");
    let _agent = KillOnDrop(
        server
            .netns
            .exec(common::letterbox_bin())
            .arg("run")
            .arg(&file)
            .arg("--state")
            .arg(&state)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("letterbox run starts"),
    );

    let line = common::wait_for(TIMEOUT, || {
        let status = common::ctl(&socket, &["status"])?;
        let line = status
            .lines()
            .find(|l| l.starts_with("clock:"))?
            .to_string();
        line.contains("(offset ").then_some(line)
    })
    .expect("status never showed the server's offset");
    assert!(
        line.starts_with("clock:     kept by the host; 127.0.0.1 (offset "),
        "{line}"
    );
    // chronyd serves the host's own clock: a measured offset under a second says so.
    let offset = line
        .split("(offset ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|secs| secs.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no offset in {line}"));
    assert!(offset.abs() < 1.0, "{line}");
    assert!(
        common::unit_line(&socket, "clock").is_some_and(|l| l.contains("running")),
        "{:?}",
        common::unit_line(&socket, "clock")
    );
    // Only the machine's own init saves the time it keeps.
    assert!(!saved::path(&state).exists());
}

//! tests/run's honesty about test binaries that do not end cleanly: it runs the fixtures
//! of tests/runner_fixture.rs (ignored there, so they run only when asked for) through
//! tests/run with a 5-second limit and checks its summary line: a hanging test is stopped
//! at the limit and counted as failed, and so is a binary that crashes or exits before
//! libtest's summary. If tests/run counted any of them as passed, these tests fail.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The limit tests/run gives the fixture binary.
const LIMIT: &str = "5s";
/// Far beyond LIMIT: a runner still going by then does not enforce its limit.
const GUARD: Duration = Duration::from_secs(120);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    /// tests/run's summary line (there must be exactly one).
    fn summary(&self) -> &str {
        let lines: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| l.starts_with("letterbox: ") && l.contains(" passed, "))
            .collect();
        assert_eq!(lines.len(), 1, "one summary line expected\n{self}");
        lines[0]
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "tests/run: {} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// `tests/run --test runner_fixture -- --ignored --exact TESTS` with the fixture limit.
fn run_fixtures(tests: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let start = Instant::now();
    let mut child = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/run"))
        .args(["--test", "runner_fixture", "--", "--ignored", "--exact"])
        .args(tests)
        .env("LETTERBOX_RUNNER_FIXTURE", "1")
        .env("LETTERBOX_TEST_TIMEOUT", LIMIT)
        .env_remove("LETTERBOX_TEST_TIMEOUT_RUNNER_FIXTURE")
        .env_remove("UPDATE_GOLDEN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        // A group of its own, so that the guard below can end all of it.
        .process_group(0)
        .spawn()
        .expect("run tests/run");
    let status = common::wait_for(GUARD, || child.try_wait().unwrap());
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let Some(status) = status else {
        let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        panic!(
            "tests/run did not stop the fixture within {GUARD:?} (limit {LIMIT}):\n{}",
            read(&out)
        );
    };
    Run {
        status,
        stdout: read(&out),
        stderr: read(&err),
        elapsed: start.elapsed(),
    }
}

#[test]
fn a_hanging_test_is_stopped_at_the_limit_and_counted_as_failed() {
    let run = run_fixtures(&["fixture_passes", "fixture_hangs"]);
    // The passing test still counts; the hanging one is a failure, not a pass.
    assert_eq!(
        run.summary(),
        "letterbox: 1 passed, 1 failed, 0 skipped",
        "{run}"
    );
    assert_eq!(run.status.code(), Some(101), "{run}");
    assert!(
        run.stdout.contains(&format!("timed out after {LIMIT}")),
        "{run}"
    );
    assert!(run.stdout.contains("NOT FINISHED fixture_hangs"), "{run}");
    assert!(run.elapsed < Duration::from_secs(60), "{run}");
}

#[test]
fn a_crashing_test_binary_is_counted_as_failed() {
    let run = run_fixtures(&["fixture_crashes"]);
    assert_eq!(
        run.summary(),
        "letterbox: 0 passed, 1 failed, 0 skipped",
        "{run}"
    );
    assert_eq!(run.status.code(), Some(101), "{run}");
    assert!(run.stdout.contains("was killed by SIGABRT"), "{run}");
    assert!(run.stdout.contains("NOT FINISHED fixture_crashes"), "{run}");
}

#[test]
fn a_binary_exiting_0_before_its_summary_is_counted_as_failed() {
    let run = run_fixtures(&["fixture_exits_early"]);
    assert_eq!(
        run.summary(),
        "letterbox: 0 passed, 1 failed, 0 skipped",
        "{run}"
    );
    assert_eq!(run.status.code(), Some(101), "{run}");
    assert!(
        run.stdout
            .contains("exited with status 0 but without libtest's summary"),
        "{run}"
    );
}

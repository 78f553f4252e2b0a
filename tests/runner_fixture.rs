//! Fixtures for tests/runner.rs, which runs them through tests/run to show that the runner
//! stops a hanging test binary at its limit and counts a crashed one as failed. Ignored, so
//! that they run only when asked for with `--ignored`; and only under tests/runner.rs
//! (LETTERBOX_RUNNER_FIXTURE=1): run any other way they fail at once instead of hanging or
//! crashing the run.

use std::time::Duration;

/// Fails the calling test unless tests/runner.rs runs it.
fn only_under_the_runner_self_test() {
    assert_eq!(
        std::env::var("LETTERBOX_RUNNER_FIXTURE").as_deref(),
        Ok("1"),
        "a fixture of tests/runner.rs: it hangs or crashes on purpose, run it only from there"
    );
}

#[test]
#[ignore = "fixture of tests/runner.rs"]
fn fixture_passes() {
    only_under_the_runner_self_test();
}

#[test]
#[ignore = "fixture of tests/runner.rs"]
fn fixture_hangs() {
    only_under_the_runner_self_test();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[test]
#[ignore = "fixture of tests/runner.rs"]
fn fixture_crashes() {
    only_under_the_runner_self_test();
    std::process::abort();
}

#[test]
#[ignore = "fixture of tests/runner.rs"]
fn fixture_exits_early() {
    only_under_the_runner_self_test();
    // Exit status 0, but libtest never prints its summary.
    std::process::exit(0);
}

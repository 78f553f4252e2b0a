//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;

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

/// True when the process may create namespaces and configure links.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Path of the `letterbox` binary built for this test run.
pub fn letterbox_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_letterbox"))
}

//! The last known time, on the data partition: `STATE/clock` holds seconds since 1970, as
//! text. The clock unit writes it while it runs and when it stops; the next boot restores
//! it, so the clock never starts earlier than where it stopped.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{utc, Clock, ClockError};

/// The file's name in the state directory.
pub const SAVED_TIME_FILE: &str = "clock";

#[derive(Debug, thiserror::Error)]
pub enum SavedTimeError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: expected seconds since 1970, found {found:?}")]
    Corrupt { path: PathBuf, found: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(SAVED_TIME_FILE)
}

/// Records `now` (whole seconds; the part lost is less than a second of going back).
pub fn save(state_dir: &Path, now: SystemTime) -> Result<(), SavedTimeError> {
    let path = path(state_dir);
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    crate::atomic_file::replace(&path, format!("{secs}\n").as_bytes())
        .map_err(|source| SavedTimeError::Write { path, source })
}

/// The saved time; `None` when none was ever saved.
pub fn load(state_dir: &Path) -> Result<Option<SystemTime>, SavedTimeError> {
    let path = path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SavedTimeError::Read { path, source }),
    };
    match text.trim().parse::<u64>() {
        Ok(secs) => Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))),
        Err(_) => Err(SavedTimeError::Corrupt {
            found: text.chars().take(40).collect(),
            path,
        }),
    }
}

/// Where the restored time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoredFrom {
    SavedTime,
    BuildTime,
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The clock was behind and was set forward.
    SetForward {
        to: SystemTime,
        from: RestoredFrom,
        /// Why the saved time was not used, if it was unreadable.
        problem: Option<String>,
    },
    /// The clock was already at or past both (a board with a real-time clock, or a
    /// reboot without power loss).
    AlreadyLater {
        now: SystemTime,
        problem: Option<String>,
    },
}

impl fmt::Display for Restore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, problem) = match self {
            Restore::SetForward { to, from, problem } => (
                format!(
                    "set to {}, {}",
                    utc(*to),
                    match from {
                        RestoredFrom::SavedTime => "the time saved before the last shutdown",
                        RestoredFrom::BuildTime => "the image's build time",
                    }
                ),
                problem,
            ),
            Restore::AlreadyLater { now, problem } => (
                format!(
                    "left at {}, past the saved time and the build time",
                    utc(*now)
                ),
                problem,
            ),
        };
        f.write_str(&text)?;
        match problem {
            Some(problem) => write!(f, " ({problem})"),
            None => Ok(()),
        }
    }
}

/// Sets `clock` to the saved time or `built`, whichever is later, if it is behind it. An
/// unreadable saved time is reported in the result, not an error: the build time still
/// stands.
pub fn restore(
    state_dir: &Path,
    built: Option<SystemTime>,
    clock: &dyn Clock,
) -> Result<Restore, ClockError> {
    let (saved, problem) = match load(state_dir) {
        Ok(saved) => (saved, None),
        Err(e) => (None, Some(crate::error_chain(&e))),
    };
    let floor = match (saved, built) {
        (Some(s), Some(b)) if b > s => Some((b, RestoredFrom::BuildTime)),
        (Some(s), _) => Some((s, RestoredFrom::SavedTime)),
        (None, Some(b)) => Some((b, RestoredFrom::BuildTime)),
        (None, None) => None,
    };
    let now = clock.now();
    match floor {
        Some((to, from)) if now < to => {
            clock.step_to(to)?;
            Ok(Restore::SetForward { to, from, problem })
        }
        _ => Ok(Restore::AlreadyLater { now, problem }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_time_reads_back_to_the_second() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_062_303_900);
        save(dir.path(), t).unwrap();
        assert_eq!(
            load(dir.path()).unwrap(),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_062_303))
        );
    }

    #[test]
    fn a_corrupt_saved_time_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "yesterday\n").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("clock is corrupt: expected seconds since 1970, found \"yesterday\\n\""),
            "{e}"
        );
    }
}

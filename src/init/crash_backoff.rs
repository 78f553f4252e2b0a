//! A crash on every boot backs off instead of looping fast: each boot counts itself on the
//! data partition, the count is cleared once the agent has run for a while or shuts down
//! cleanly, and a boot that finds unfinished ones before it waits, longer each time,
//! before it starts the units that could crash it again (the console comes up first).
//! A watchdog reset, a kernel panic (`panic=10`) or a power cut soon after boot all count.

use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{info, warn};

/// In the state directory: how many boots in a row ended before [`STABLE_AFTER`].
const FILE: &str = "unfinished-boots";
/// Running this long means the boot went well.
pub const STABLE_AFTER: Duration = Duration::from_secs(600);
const FIRST_DELAY: Duration = Duration::from_secs(15);
const MAX_DELAY: Duration = Duration::from_secs(900);

pub struct CrashBackoff {
    path: PathBuf,
    /// Boots in a row before this one that ended early.
    unfinished: u32,
}

impl CrashBackoff {
    /// Counts this boot (written before anything that could crash it).
    pub fn record_boot(state_dir: &Path) -> CrashBackoff {
        let path = state_dir.join(FILE);
        let unfinished = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        if let Err(e) =
            crate::atomic_file::replace(&path, format!("{}\n", unfinished + 1).as_bytes())
        {
            warn!("crash backoff: cannot write {}: {e}", path.display());
        }
        CrashBackoff { path, unfinished }
    }

    /// How long to wait before starting the units.
    pub fn delay(&self) -> Duration {
        delay_after(self.unfinished)
    }

    /// Waits out [`CrashBackoff::delay`], saying why.
    pub async fn wait(&self) {
        let delay = self.delay();
        if delay.is_zero() {
            return;
        }
        warn!(
            "the last {} boot(s) ended within {} minutes: waiting {} s before starting the units",
            self.unfinished,
            STABLE_AFTER.as_secs() / 60,
            delay.as_secs()
        );
        tokio::time::sleep(delay).await;
    }

    /// This boot went well (ran long enough, or is shutting down cleanly).
    pub fn clear(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => info!("crash backoff: boot counted as good"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("crash backoff: cannot remove {}: {e}", self.path.display()),
        }
    }
}

/// None after a good boot; then 15 s, doubling with each early end, at most 15 minutes.
fn delay_after(unfinished: u32) -> Duration {
    match unfinished {
        0 => Duration::ZERO,
        n => FIRST_DELAY
            .saturating_mul(1 << (n - 1).min(16))
            .min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_with_each_early_end_up_to_a_limit() {
        let secs = |n| delay_after(n).as_secs();
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6, 7].map(secs),
            [0, 15, 30, 60, 120, 240, 480, 900]
        );
        assert_eq!(secs(u32::MAX), 900);
    }

    #[test]
    fn boots_count_until_one_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            CrashBackoff::record_boot(dir.path()).delay(),
            Duration::ZERO
        );
        assert_eq!(CrashBackoff::record_boot(dir.path()).delay(), FIRST_DELAY);
        let third = CrashBackoff::record_boot(dir.path());
        assert_eq!(third.delay(), FIRST_DELAY * 2);
        third.clear();
        assert_eq!(
            CrashBackoff::record_boot(dir.path()).delay(),
            Duration::ZERO
        );
    }
}

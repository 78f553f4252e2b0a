//! The pause after a failed login, which grows with each failure so that guessing over
//! the serial line is slow.

use std::time::Duration;

const FIRST: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(30);

/// Failed logins since the last successful one.
#[derive(Debug, Default)]
pub struct FailedLogins(u32);

impl FailedLogins {
    /// Records a failure and returns how long to wait before answering: 1s, 2s, 4s, ...
    /// up to 30s.
    pub fn record(&mut self) -> Duration {
        self.0 = self.0.saturating_add(1);
        delay(self.0)
    }

    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST * 2u32.pow(doublings)).min(CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_thirty_seconds_and_resets_on_success() {
        let mut f = FailedLogins::default();
        let secs: Vec<u64> = (0..8).map(|_| f.record().as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        for _ in 0..100 {
            f.record();
        }
        assert_eq!(f.record(), CAP);
        f.reset();
        assert_eq!(f.record(), FIRST);
    }
}

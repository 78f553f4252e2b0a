//! Where the clock stands, shared between the clock unit that keeps it and whatever must
//! wait for a trustworthy time.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::{Offset, Restore, Sample};

/// The last answer a server gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// As configured: a name or an address.
    pub server: String,
    pub address: SocketAddr,
    /// The clock's offset before it was corrected.
    pub offset: Offset,
    pub at: Instant,
}

impl Synced {
    pub fn new(server: &str, sample: &Sample) -> Synced {
        Synced {
            server: server.to_string(),
            address: sample.address,
            offset: sample.offset,
            at: Instant::now(),
        }
    }
}

/// `time.cloudflare.com (162.159.200.1) (offset +0.003 s, 12 s ago)`.
impl fmt::Display for Synced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (offset {}, {} s ago)",
            super::describe(&self.server, self.address),
            self.offset,
            self.at.elapsed().as_secs()
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockState {
    /// This agent keeps the clock, and no server has answered yet this boot.
    Unsynchronised {
        /// What the boot step did, when it ran.
        restored: Option<Restore>,
        /// Why the last attempt failed.
        problem: Option<String>,
    },
    /// This agent set the clock from a server this boot.
    Synchronised(Synced),
    /// `ntp = []`: time sync is off, and the clock is taken as it is (a board with a
    /// real-time clock).
    SyncOff,
    /// The host keeps its own clock (`letterbox run`, the agent as PID 1 of a namespace);
    /// the unit only measures it.
    KeptByHost {
        last: Option<Synced>,
        problem: Option<String>,
    },
}

impl ClockState {
    /// Whether times may be stamped and judged by the clock: certificates, ACME, DKIM.
    pub fn is_trusted(&self) -> bool {
        !matches!(self, ClockState::Unsynchronised { .. })
    }
}

/// The line `status` shows after `clock:`.
impl fmt::Display for ClockState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClockState::Unsynchronised { restored, problem } => {
                f.write_str("not synchronised")?;
                if let Some(restored) = restored {
                    write!(f, " (at boot: {restored})")?;
                }
                if let Some(problem) = problem {
                    write!(f, "; {problem}")?;
                }
                Ok(())
            }
            ClockState::Synchronised(sync) => write!(f, "synchronised from {sync}"),
            ClockState::SyncOff => f.write_str("not synchronised: time sync is off (ntp = [])"),
            ClockState::KeptByHost { last, problem } => {
                f.write_str("kept by the host")?;
                if let Some(last) = last {
                    write!(f, "; {last}")?;
                }
                if let Some(problem) = problem {
                    write!(f, "; {problem}")?;
                }
                Ok(())
            }
        }
    }
}

/// The shared [`ClockState`]: the clock unit sets it, anyone may read it or wait for a
/// trustworthy clock.
#[derive(Clone)]
pub struct ClockStatus(Arc<watch::Sender<ClockState>>);

impl ClockStatus {
    pub fn new(state: ClockState) -> ClockStatus {
        ClockStatus(Arc::new(watch::Sender::new(state)))
    }

    pub fn state(&self) -> ClockState {
        self.0.borrow().clone()
    }

    pub fn is_trusted(&self) -> bool {
        self.0.borrow().is_trusted()
    }

    pub fn set(&self, state: ClockState) {
        self.0.send_replace(state);
    }

    /// Returns once the clock can be trusted.
    pub async fn trusted(&self) {
        let mut changes = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = changes.wait_for(ClockState::is_trusted).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sync() -> Synced {
        Synced {
            server: "ntp.example.org".into(),
            address: "192.0.2.1:123".parse().unwrap(),
            offset: Offset::from_micros(3_000),
            at: Instant::now(),
        }
    }

    #[test]
    fn status_says_where_the_time_came_from() {
        assert_eq!(
            ClockState::Synchronised(sync()).to_string(),
            "synchronised from ntp.example.org (192.0.2.1) (offset +0.003 s, 0 s ago)"
        );
        let restored = Restore::SetForward {
            to: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_062_303),
            from: super::super::RestoredFrom::SavedTime,
            problem: None,
        };
        assert_eq!(
            ClockState::Unsynchronised {
                restored: Some(restored),
                problem: Some("no NTP server answered (x)".into()),
            }
            .to_string(),
            "not synchronised (at boot: set to 2026-11-30T18:11:43Z, the time saved before \
             the last shutdown); no NTP server answered (x)"
        );
    }

    #[test]
    fn only_an_unsynchronised_clock_is_distrusted() {
        let unsynchronised = ClockState::Unsynchronised {
            restored: None,
            problem: None,
        };
        assert!(!unsynchronised.is_trusted());
        assert!(ClockState::Synchronised(sync()).is_trusted());
        assert!(ClockState::SyncOff.is_trusted());
        assert!(ClockState::KeptByHost {
            last: None,
            problem: None
        }
        .is_trusted());
    }

    #[tokio::test]
    async fn a_waiter_goes_on_once_the_clock_is_synchronised() {
        let status = ClockStatus::new(ClockState::Unsynchronised {
            restored: None,
            problem: None,
        });
        let waiting = tokio::spawn({
            let status = status.clone();
            async move { status.trusted().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "went on before the clock was set");
        status.set(ClockState::Synchronised(sync()));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("still waiting after synchronisation")
            .unwrap();
    }
}

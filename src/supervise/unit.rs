//! What a unit is: an in-process async task or a child process, how it is restarted
//! (an exponential, capped backoff), and the states the supervisor reports.
//!
//! ```text
//! supervisor.start(Unit::task("dns", move |mut stop| async move {
//!     let server = start_the_server().await?;
//!     stop.requested().await;          // until the unit is stopped or restarted
//!     server.shutdown().await;         // within `grace`, or the task is dropped
//!     Ok(())                           // returning early (Ok or Err) means: restart
//! }).logs_from(&["letterbox::dns"]));
//! supervisor.start(Unit::process("containerd", || Command::new("/usr/bin/containerd")));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tokio::sync::watch;

/// Why a task unit ended early: any error, rendered with its sources in the unit's state.
pub type UnitError = Box<dyn std::error::Error + Send + Sync>;
/// What an in-process unit returns when it ends.
pub type TaskResult = Result<(), UnitError>;
pub type TaskFuture = Pin<Box<dyn Future<Output = TaskResult> + Send>>;

/// Tells a task unit that the supervisor is stopping it; the task should return soon after.
#[derive(Clone)]
pub struct StopSignal(pub(super) watch::Receiver<bool>);

impl StopSignal {
    /// Resolves once a stop has been requested (or the supervisor is gone).
    pub async fn requested(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

pub enum Start {
    /// An in-process task, made afresh for every (re)start.
    Task(Box<dyn Fn(StopSignal) -> TaskFuture + Send + Sync>),
    /// A child process, its command built afresh for every (re)start. It runs in a
    /// process group of its own, with stdout and stderr kept in the unit's output ring.
    Process(Box<dyn Fn() -> Command + Send + Sync>),
}

pub struct Unit {
    pub name: String,
    pub start: Start,
    /// How long a stop waits (after SIGTERM, or after signalling a task) before it kills.
    pub grace: Duration,
    pub backoff: Backoff,
    /// Log targets (module paths) whose lines belong in the unit's output ring.
    pub log_targets: Vec<String>,
}

const DEFAULT_GRACE: Duration = Duration::from_secs(5);

impl Unit {
    pub fn task<F, Fut>(name: &str, start: F) -> Unit
    where
        F: Fn(StopSignal) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        Unit::new(
            name,
            Start::Task(Box::new(move |stop| Box::pin(start(stop)))),
        )
    }

    pub fn process<F>(name: &str, command: F) -> Unit
    where
        F: Fn() -> Command + Send + Sync + 'static,
    {
        Unit::new(name, Start::Process(Box::new(command)))
    }

    fn new(name: &str, start: Start) -> Unit {
        Unit {
            name: name.into(),
            start,
            grace: DEFAULT_GRACE,
            backoff: Backoff::default(),
            log_targets: Vec::new(),
        }
    }

    /// Keeps the log lines of these modules (and their submodules) in the unit's ring.
    /// How long a stop waits for the unit before it kills it (or drops its task).
    pub fn with_grace(mut self, grace: Duration) -> Unit {
        self.grace = grace;
        self
    }

    pub fn logs_from(mut self, targets: &[&str]) -> Unit {
        self.log_targets = targets.iter().map(|t| t.to_string()).collect();
        self
    }
}

/// Exponential restart delay: `initial`, doubling up to `max`; back to `initial` when the
/// last run lasted at least `stable`.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub stable: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(30),
        )
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, stable: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            stable,
            next: initial,
        }
    }

    /// The delay before the next start, given how long the last run lasted.
    pub fn delay_after(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.stable {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Starts over, as after a stable run: a restart asked for is not a failure.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    Starting,
    Running {
        since: Instant,
        pid: Option<Pid>,
    },
    /// Ended and waiting out its backoff before the next start.
    Restarting {
        restarts: u32,
        last_exit: String,
    },
    Stopping,
    Stopped,
}

impl fmt::Display for UnitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitState::Starting => f.write_str("starting"),
            UnitState::Running { since, pid } => {
                write!(f, "running for {}s", since.elapsed().as_secs())?;
                match pid {
                    Some(pid) => write!(f, " (pid {pid})"),
                    None => Ok(()),
                }
            }
            UnitState::Restarting {
                restarts,
                last_exit,
            } => write!(f, "restarting ({last_exit}; {restarts} restarts)"),
            UnitState::Stopping => f.write_str("stopping"),
            UnitState::Stopped => f.write_str("stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_after_a_stable_run() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(8), s(30));
        let delays: Vec<u64> = (0..6).map(|_| b.delay_after(s(0)).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
        // A run shorter than `stable` keeps growing; a long one starts over.
        assert_eq!(b.delay_after(s(29)), s(8));
        assert_eq!(b.delay_after(s(30)), s(1));
        assert_eq!(b.delay_after(s(0)), s(2));
        b.reset();
        assert_eq!(b.delay_after(s(0)), s(1));
    }
}

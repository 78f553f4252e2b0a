//! Supervised units: the things the agent keeps running (the console login now; the DNS
//! server and containerd later). A unit is either an in-process async task or a child
//! process; when it ends it is restarted after an exponential, capped backoff that resets
//! once the unit has stayed up a while. Units stop in reverse start order.
//!
//! Plugging in a unit (in `init::boot`, after the console):
//!
//! ```text
//! supervisor.start(Unit::task("dns", move |mut stop| async move {
//!     let server = start_the_server().await.map_err(|e| crate::error_chain(&e))?;
//!     stop.requested().await;          // until the agent shuts down
//!     server.shutdown().await;         // within `grace`, or the task is dropped
//!     Ok(())                           // returning early (Ok or Err) means: restart
//! }));
//! supervisor.start(Unit::process("containerd", || Command::new("/usr/bin/containerd")));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::reaper::Reaper;

/// What an in-process unit returns when it ends; `Err` is logged as the reason.
pub type TaskResult = Result<(), String>;
pub type TaskFuture = Pin<Box<dyn Future<Output = TaskResult> + Send>>;

/// Tells a task unit that the agent is stopping it; the task should return soon after.
#[derive(Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Resolves once a stop has been requested.
    pub async fn requested(&mut self) {
        stop_requested(&mut self.0).await
    }
}

async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // An error means the supervisor is gone: that is a stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

pub enum Start {
    /// An in-process task, made afresh for every (re)start.
    Task(Box<dyn Fn(StopSignal) -> TaskFuture + Send + Sync>),
    /// A child process, its command built afresh for every (re)start.
    Process(Box<dyn Fn() -> Command + Send + Sync>),
}

pub struct Unit {
    pub name: String,
    pub start: Start,
    /// How long a stop waits (after SIGTERM, or after signalling a task) before it kills.
    pub grace: Duration,
    pub backoff: Backoff,
}

const DEFAULT_GRACE: Duration = Duration::from_secs(5);

impl Unit {
    pub fn task<F, Fut>(name: &str, start: F) -> Unit
    where
        F: Fn(StopSignal) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        Unit {
            name: name.into(),
            start: Start::Task(Box::new(move |stop| Box::pin(start(stop)))),
            grace: DEFAULT_GRACE,
            backoff: Backoff::default(),
        }
    }

    pub fn process<F>(name: &str, command: F) -> Unit
    where
        F: Fn() -> Command + Send + Sync + 'static,
    {
        Unit {
            name: name.into(),
            start: Start::Process(Box::new(command)),
            grace: DEFAULT_GRACE,
            backoff: Backoff::default(),
        }
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

/// The units' names and states, in start order; shared with the console's `status`.
#[derive(Clone, Default)]
pub struct UnitTable(Arc<Mutex<Vec<(String, UnitState)>>>);

impl UnitTable {
    pub fn snapshot(&self) -> Vec<(String, UnitState)> {
        self.0.lock().expect("unit table").clone()
    }

    fn set(&self, name: &str, state: UnitState) {
        let mut table = self.0.lock().expect("unit table");
        match table.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = state,
            None => table.push((name.to_string(), state)),
        }
    }
}

struct Supervised {
    name: String,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

pub struct Supervisor {
    reaper: Reaper,
    table: UnitTable,
    units: Vec<Supervised>,
}

impl Supervisor {
    pub fn new(reaper: Reaper, table: UnitTable) -> Supervisor {
        Supervisor {
            reaper,
            table,
            units: Vec::new(),
        }
    }

    /// Starts a unit and keeps it running until [`Supervisor::stop_all`].
    pub fn start(&mut self, unit: Unit) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let name = unit.name.clone();
        self.table.set(&name, UnitState::Starting);
        log::info!("starting unit {name}");
        let handle = tokio::spawn(supervise(
            unit,
            self.reaper.clone(),
            self.table.clone(),
            stop_rx,
        ));
        self.units.push(Supervised {
            name,
            stop: stop_tx,
            handle,
        });
    }

    /// Stops the units one by one, last started first.
    pub async fn stop_all(self) {
        for unit in self.units.into_iter().rev() {
            log::info!("stopping unit {}", unit.name);
            let _ = unit.stop.send(true);
            let _ = unit.handle.await;
            log::info!("unit {} stopped", unit.name);
        }
    }
}

/// How one run of a unit ended.
enum Outcome {
    Ended(String),
    Stopped,
}

async fn supervise(
    mut unit: Unit,
    reaper: Reaper,
    table: UnitTable,
    mut stop: watch::Receiver<bool>,
) {
    let mut restarts = 0;
    loop {
        let started = Instant::now();
        let outcome = match &unit.start {
            Start::Task(make) => run_task(&unit, make, &table, stop.clone()).await,
            Start::Process(command) => {
                run_process(&unit, command(), &reaper, &table, stop.clone()).await
            }
        };
        let Outcome::Ended(how) = outcome else {
            table.set(&unit.name, UnitState::Stopped);
            return;
        };
        let delay = unit.backoff.delay_after(started.elapsed());
        restarts += 1;
        log::warn!(
            "unit {} {how}; restarting in {}s",
            unit.name,
            delay.as_secs_f32()
        );
        table.set(
            &unit.name,
            UnitState::Restarting {
                restarts,
                last_exit: how,
            },
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut stop) => {
                table.set(&unit.name, UnitState::Stopped);
                return;
            }
        }
    }
}

async fn run_task(
    unit: &Unit,
    make: &(dyn Fn(StopSignal) -> TaskFuture + Send + Sync),
    table: &UnitTable,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let mut task = make(StopSignal(stop.clone()));
    table.set(
        &unit.name,
        UnitState::Running {
            since: Instant::now(),
            pid: None,
        },
    );
    tokio::select! {
        result = &mut task => Outcome::Ended(match result {
            Ok(()) => "ended".into(),
            Err(e) => format!("failed: {e}"),
        }),
        _ = stop_requested(&mut stop) => {
            table.set(&unit.name, UnitState::Stopping);
            if tokio::time::timeout(unit.grace, task).await.is_err() {
                // Dropping the future cancels the task at its next await point.
                log::warn!("unit {} did not stop within {:?}; cancelled", unit.name, unit.grace);
            }
            Outcome::Stopped
        }
    }
}

async fn run_process(
    unit: &Unit,
    mut command: Command,
    reaper: &Reaper,
    table: &UnitTable,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let (pid, mut exit) = match reaper.spawn(&mut command) {
        Ok(spawned) => spawned,
        Err(e) => return Outcome::Ended(format!("failed: {}", crate::error_chain(&e))),
    };
    table.set(
        &unit.name,
        UnitState::Running {
            since: Instant::now(),
            pid: Some(pid),
        },
    );
    tokio::select! {
        status = &mut exit => Outcome::Ended(describe_exit(status.ok())),
        _ = stop_requested(&mut stop) => {
            table.set(&unit.name, UnitState::Stopping);
            let _ = kill(pid, Signal::SIGTERM);
            if tokio::time::timeout(unit.grace, &mut exit).await.is_err() {
                log::warn!("unit {} (pid {pid}) ignored SIGTERM for {:?}; killing it", unit.name, unit.grace);
                let _ = kill(pid, Signal::SIGKILL);
                let _ = exit.await;
            }
            Outcome::Stopped
        }
    }
}

fn describe_exit(status: Option<WaitStatus>) -> String {
    match status {
        Some(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
        Some(WaitStatus::Signaled(_, signal, _)) => format!("was killed by {signal}"),
        other => format!("ended ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::reaper::Scope;
    use std::os::fd::{AsFd, FromRawFd};

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
    }

    fn fast(mut unit: Unit) -> Unit {
        let ms = Duration::from_millis;
        unit.backoff = Backoff::new(ms(10), ms(40), Duration::from_secs(60));
        unit.grace = ms(300);
        unit
    }

    #[tokio::test]
    async fn restarts_a_failing_process_and_stops_a_running_one() {
        let reaper = Reaper::start(Scope::Spawned).unwrap();
        let table = UnitTable::default();
        let mut sup = Supervisor::new(reaper, table.clone());
        sup.start(fast(Unit::process("fails", || {
            let mut c = Command::new("sh");
            c.args(["-c", "exit 3"]);
            c
        })));
        sup.start(fast(Unit::process("sleeps", || {
            let mut c = Command::new("sleep");
            c.arg("100");
            c
        })));
        let mut restarted = false;
        // Generous: three restarts take ~70 ms, but CI machines stall.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some((
                _,
                UnitState::Restarting {
                    restarts,
                    last_exit,
                },
            )) = table.snapshot().into_iter().find(|(n, _)| n == "fails")
            {
                if restarts >= 3 {
                    assert_eq!(last_exit, "exited with status 3");
                    restarted = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(restarted, "{:?}", table.snapshot());
        let Some((_, UnitState::Running { pid: Some(pid), .. })) =
            table.snapshot().into_iter().find(|(n, _)| n == "sleeps")
        else {
            panic!("sleep is not running: {:?}", table.snapshot());
        };
        // A pidfd names this very process, whatever later reuses the pid.
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let pidfd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the descriptor was just opened and is owned here alone.
        let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as i32) };
        sup.stop_all().await;
        assert!(table
            .snapshot()
            .iter()
            .all(|(_, s)| *s == UnitState::Stopped));
        // SIGTERM ended the sleep and it was reaped: nothing is left to wait for.
        let left = nix::sys::wait::waitid(
            nix::sys::wait::Id::PIDFd(pidfd.as_fd()),
            nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOHANG,
        );
        assert_eq!(left, Err(nix::errno::Errno::ECHILD), "sleep was not reaped");
    }

    #[tokio::test]
    async fn stops_tasks_in_reverse_start_order() {
        let reaper = Reaper::start(Scope::Spawned).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut sup = Supervisor::new(reaper, UnitTable::default());
        for name in ["first", "second", "third"] {
            let order = order.clone();
            sup.start(fast(Unit::task(name, move |mut stop| {
                let order = order.clone();
                async move {
                    stop.requested().await;
                    order.lock().unwrap().push(name);
                    Ok(())
                }
            })));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        sup.stop_all().await;
        assert_eq!(*order.lock().unwrap(), ["third", "second", "first"]);
    }
}

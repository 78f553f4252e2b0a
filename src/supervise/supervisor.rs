//! The supervisor: keeps units running, restarts one that ends (after its backoff), and
//! starts, stops and restarts units by name while the agent runs. Units stop in reverse
//! start order.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::output::{self, OutputRing, UNIT_LINES};
use super::reaper::{signal_pidfd, Reaper, Spawned};
use super::unit::{Start, StopSignal, TaskFuture, Unit, UnitState};

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("a unit named {0} is already running")]
    Exists(String),
    #[error("no unit named `{name}`; expected one of: {known}")]
    Unknown { name: String, known: String },
}

/// What the agent wants of a unit: to run (each restart asked for is a new generation),
/// or to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run(u64),
    Stop,
}

struct Entry {
    name: String,
    control: watch::Sender<Control>,
    state: Arc<Mutex<UnitState>>,
    output: Arc<OutputRing>,
    handle: JoinHandle<()>,
}

/// The units, in start order. Shared: the agent owns it, and commands reach it by name.
pub struct Supervisor {
    reaper: Reaper,
    units: Mutex<Vec<Entry>>,
}

/// What one supervised unit's loop holds.
struct Supervised {
    unit: Unit,
    reaper: Reaper,
    state: Arc<Mutex<UnitState>>,
    output: Arc<OutputRing>,
}

/// How one run of a unit ended.
enum Outcome {
    Ended(String),
    /// Stopped because the agent asked for a restart or a stop.
    Asked,
}

impl Supervisor {
    pub fn new(reaper: Reaper) -> Supervisor {
        Supervisor {
            reaper,
            units: Mutex::default(),
        }
    }

    /// Starts a unit and keeps it running until it is stopped.
    pub fn start(&self, unit: Unit) -> Result<(), SuperviseError> {
        let mut units = self.lock();
        if units.iter().any(|e| e.name == unit.name) {
            return Err(SuperviseError::Exists(unit.name));
        }
        let name = unit.name.clone();
        let output = Arc::new(OutputRing::new(UNIT_LINES));
        let mut targets = unit.log_targets.clone();
        targets.push(unit_target(&name));
        super::log::logger().tap(targets, output.clone());
        let state = Arc::new(Mutex::new(UnitState::Starting));
        let (control, watch) = watch::channel(Control::Run(0));
        log::info!("starting unit {name}");
        let handle = tokio::spawn(supervise(
            Supervised {
                unit,
                reaper: self.reaper.clone(),
                state: state.clone(),
                output: output.clone(),
            },
            watch,
        ));
        units.push(Entry {
            name,
            control,
            state,
            output,
            handle,
        });
        Ok(())
    }

    /// Stops the unit's current run and starts it again at once (no backoff).
    pub fn restart(&self, name: &str) -> Result<(), SuperviseError> {
        let units = self.lock();
        let entry = find(&units, name)?;
        entry.control.send_modify(|c| {
            if let Control::Run(generation) = c {
                *generation += 1;
            }
        });
        log::info!(target: &unit_target(name), "restarting unit {name}");
        Ok(())
    }

    /// Stops a unit and forgets it.
    pub async fn stop(&self, name: &str) -> Result<(), SuperviseError> {
        let entry = {
            let mut units = self.lock();
            find(&units, name)?;
            let at = units.iter().position(|e| e.name == name).expect("found");
            units.remove(at)
        };
        stop_entry(entry).await;
        Ok(())
    }

    /// Stops the units one by one, last started first.
    pub async fn stop_all(&self) {
        loop {
            let Some(entry) = self.lock().pop() else {
                return;
            };
            stop_entry(entry).await;
        }
    }

    /// The units' names and states, in start order.
    pub fn states(&self) -> Vec<(String, UnitState)> {
        self.lock()
            .iter()
            .map(|e| (e.name.clone(), lock(&e.state).clone()))
            .collect()
    }

    /// A unit's most recent `lines` lines of output and log.
    pub fn output(&self, name: &str, lines: usize) -> Result<Vec<String>, SuperviseError> {
        Ok(find(&self.lock(), name)?.output.recent(lines))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn find<'a>(units: &'a [Entry], name: &str) -> Result<&'a Entry, SuperviseError> {
    units
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| SuperviseError::Unknown {
            name: name.to_string(),
            known: units
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

async fn stop_entry(entry: Entry) {
    log::info!("stopping unit {}", entry.name);
    let _ = entry.control.send(Control::Stop);
    let _ = entry.handle.await;
    super::log::logger().untap(&entry.output);
    log::info!("unit {} stopped", entry.name);
}

/// The log target of what the supervisor says about a unit, kept in the unit's ring.
fn unit_target(name: &str) -> String {
    format!("letterbox::unit::{name}")
}

fn lock(state: &Mutex<UnitState>) -> std::sync::MutexGuard<'_, UnitState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn supervise(mut s: Supervised, mut control: watch::Receiver<Control>) {
    let target = unit_target(&s.unit.name);
    let mut restarts = 0;
    loop {
        // A dropped sender (the supervisor is gone) is a stop too.
        if *control.borrow_and_update() == Control::Stop || control.has_changed().is_err() {
            break;
        }
        let started = Instant::now();
        let how = match s.run_once(&mut control).await {
            Outcome::Asked => {
                s.unit.backoff.reset();
                continue;
            }
            Outcome::Ended(how) => how,
        };
        let delay = s.unit.backoff.delay_after(started.elapsed());
        restarts += 1;
        log::warn!(
            target: &target,
            "unit {} {how}; restarting in {}s",
            s.unit.name,
            delay.as_secs_f32()
        );
        s.set(UnitState::Restarting {
            restarts,
            last_exit: how,
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // A restart or a stop asked for: the loop's first line tells which.
            _ = control.changed() => {}
        }
    }
    s.set(UnitState::Stopped);
}

impl Supervised {
    fn set(&self, state: UnitState) {
        *lock(&self.state) = state;
    }

    async fn run_once(&mut self, control: &mut watch::Receiver<Control>) -> Outcome {
        match &self.unit.start {
            Start::Task(make) => {
                let (stop, stop_rx) = watch::channel(false);
                let task = make(StopSignal(stop_rx));
                self.run_task(task, stop, control).await
            }
            Start::Process(command) => {
                let mut command = command();
                command
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                std::os::unix::process::CommandExt::process_group(&mut command, 0);
                self.run_process(command, control).await
            }
        }
    }

    async fn run_task(
        &self,
        mut task: TaskFuture,
        stop: watch::Sender<bool>,
        control: &mut watch::Receiver<Control>,
    ) -> Outcome {
        self.set(UnitState::Running {
            since: Instant::now(),
            pid: None,
        });
        tokio::select! {
            result = &mut task => Outcome::Ended(match result {
                Ok(()) => "ended".into(),
                Err(e) => format!("failed: {}", crate::error_chain(e.as_ref())),
            }),
            _ = control.changed() => {
                self.set(UnitState::Stopping);
                let _ = stop.send(true);
                if tokio::time::timeout(self.unit.grace, task).await.is_err() {
                    // Dropping the future cancels the task at its next await point.
                    log::warn!(
                        target: &unit_target(&self.unit.name),
                        "unit {} did not stop within {:?}; cancelled",
                        self.unit.name,
                        self.unit.grace
                    );
                }
                Outcome::Asked
            }
        }
    }

    async fn run_process(
        &self,
        mut command: Command,
        control: &mut watch::Receiver<Control>,
    ) -> Outcome {
        let Spawned {
            mut child,
            pid,
            pidfd,
            mut exit,
        } = match self.reaper.spawn(&mut command) {
            Ok(spawned) => spawned,
            Err(e) => return Outcome::Ended(format!("failed: {}", crate::error_chain(&e))),
        };
        if let Some(stdout) = child.stdout.take() {
            output::capture(self.output.clone(), stdout, "stdout");
        }
        if let Some(stderr) = child.stderr.take() {
            output::capture(self.output.clone(), stderr, "stderr");
        }
        self.set(UnitState::Running {
            since: Instant::now(),
            pid: Some(pid),
        });
        // The pidfd is held until here: neither the pid nor the group id can be reused, so
        // the signals below reach this unit's processes and no others.
        let signal_group = |signal| {
            let _ = signal_pidfd(&pidfd, signal);
            let _ = killpg(pid, signal);
        };
        tokio::select! {
            status = &mut exit => Outcome::Ended(describe_exit(status.ok())),
            _ = control.changed() => {
                self.set(UnitState::Stopping);
                signal_group(Signal::SIGTERM);
                if tokio::time::timeout(self.unit.grace, &mut exit).await.is_err() {
                    log::warn!(
                        target: &unit_target(&self.unit.name),
                        "unit {} (pid {pid}) ignored SIGTERM for {:?}; killing it",
                        self.unit.name,
                        self.unit.grace
                    );
                    signal_group(Signal::SIGKILL);
                    let _ = exit.await;
                }
                // What the leader left behind in its group goes with it.
                if killpg(pid, None).is_ok() {
                    signal_group(Signal::SIGKILL);
                }
                Outcome::Asked
            }
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
#[path = "supervisor_tests.rs"]
mod tests;

//! The one owner of `waitpid`: it reaps every exited child and hands the exit status of
//! supervised children to whoever spawned them.
//!
//! As PID 1 it reaps with `waitpid(-1)`, which also collects orphans re-parented to us. On
//! an ordinary host (`letterbox run`, and unit tests that share a process with other
//! code) it waits only for the children it spawned, so it never steals someone else's.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// PID 1: every child, orphans included.
    AllChildren,
    /// Only the children spawned through [`Reaper::spawn`].
    Spawned,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot watch SIGCHLD")]
    Signal(#[source] std::io::Error),
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct Reaper {
    scope: Scope,
    /// Locked across spawn+register and across waitpid+dispatch, so a child that exits at
    /// once is never reaped before its waiter is registered.
    waiters: Arc<Mutex<HashMap<Pid, oneshot::Sender<WaitStatus>>>>,
}

impl Reaper {
    /// Starts the reaping task; call before spawning anything.
    pub fn start(scope: Scope) -> Result<Reaper, ReaperError> {
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let reaper = Reaper {
            scope,
            waiters: Arc::default(),
        };
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                task.reap();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns a child and returns its pid and a receiver for its exit status.
    pub fn spawn(
        &self,
        command: &mut Command,
    ) -> Result<(Pid, oneshot::Receiver<WaitStatus>), ReaperError> {
        let mut waiters = self.waiters.lock().expect("reaper waiters");
        let child = command.spawn().map_err(|source| ReaperError::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        // Dropping the std Child neither waits nor kills: the reaper owns the waiting.
        let pid = Pid::from_raw(child.id() as i32);
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        drop(waiters);
        // The child may have exited before it was registered; look again.
        self.reap();
        Ok((pid, rx))
    }

    fn reap(&self) {
        let mut waiters = self.waiters.lock().expect("reaper waiters");
        match self.scope {
            Scope::AllChildren => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => {
                        let Some(pid) = status.pid() else { continue };
                        match waiters.remove(&pid) {
                            Some(tx) => {
                                let _ = tx.send(status);
                            }
                            None => log::debug!("reaped orphan {pid}: {status:?}"),
                        }
                    }
                }
            },
            Scope::Spawned => {
                let exited: Vec<(Pid, WaitStatus)> = waiters
                    .keys()
                    .filter_map(|&pid| match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) => None,
                        Ok(status) => Some((pid, status)),
                        // ECHILD: someone else reaped it; report it as gone.
                        Err(_) => Some((pid, WaitStatus::Exited(pid, -1))),
                    })
                    .collect();
                for (pid, status) in exited {
                    if let Some(tx) = waiters.remove(&pid) {
                        let _ = tx.send(status);
                    }
                }
            }
        }
    }
}

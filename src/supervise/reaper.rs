//! The one owner of `waitpid`: it reaps every exited child and hands the exit status of
//! supervised children to whoever spawned them.
//!
//! As PID 1 it reaps with `waitpid(-1)`, which also collects orphans re-parented to us. On
//! an ordinary host (`letterbox run`, and unit tests that share a process with other
//! code) it waits only for the children it spawned, so it never steals someone else's.
//!
//! **No std or tokio process APIs in the agent** (`Command::output`/`status`/`wait`,
//! `Child::wait`, `tokio::process`): as PID 1 the reaper's `waitpid(-1)` takes their
//! child's exit status first and they fail with ECHILD. Run children through
//! [`Reaper::spawn`] (supervised) or [`Reaper::output`] (one-shot commands).

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
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
    #[error("cannot read the output of {program}")]
    Output {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} vanished: its exit status was lost")]
    Lost { program: String },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot hold on to {program} (pidfd_open)")]
    Pidfd {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// A child started through [`Reaper::spawn`].
pub struct Spawned {
    /// The std handle: its stdout and stderr pipes, when piped. Dropping it neither waits
    /// nor kills.
    pub child: Child,
    pub pid: Pid,
    /// Names this very process for as long as it is held, even after it was reaped: a
    /// signal through it can never reach another process that reused the pid, and
    /// neither the pid nor the process group of that number is reused meanwhile.
    pub pidfd: OwnedFd,
    pub exit: oneshot::Receiver<WaitStatus>,
}

/// Sends `signal` to the process behind `pidfd`; ESRCH once it has ended.
pub fn signal_pidfd(pidfd: &OwnedFd, signal: nix::sys::signal::Signal) -> nix::Result<()> {
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a null siginfo and
    // flags 0; it reads no memory of ours.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as nix::libc::c_int,
            std::ptr::null::<nix::libc::siginfo_t>(),
            0,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}

/// What [`Reaper::output`] collected.
#[derive(Debug)]
pub struct Output {
    pub status: WaitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
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

    /// Runs a one-shot command to its end (stdin empty) and returns its exit status and
    /// what it wrote: the reaper-aware `Command::output`.
    pub async fn output(&self, mut command: Command) -> Result<Output, ReaperError> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let program = command.get_program().to_string_lossy().into_owned();
        let Spawned {
            mut child, exit, ..
        } = self.spawn(&mut command)?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        // Blocking reads on their own threads: both pipes are drained at once, so a child
        // that fills one while we read the other cannot deadlock.
        let stdout = read_to_end(stdout);
        let stderr = read_to_end(stderr);
        let read_error = |source| ReaperError::Output {
            program: program.clone(),
            source,
        };
        let joined = |e: tokio::task::JoinError| std::io::Error::other(e.to_string());
        let stdout = stdout
            .await
            .map_err(joined)
            .and_then(|r| r)
            .map_err(read_error)?;
        let stderr = stderr
            .await
            .map_err(joined)
            .and_then(|r| r)
            .map_err(read_error)?;
        let status = exit.await.map_err(|_| ReaperError::Lost {
            program: program.clone(),
        })?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Spawns a child: its handle, pid, pidfd and a receiver for its exit status.
    pub fn spawn(&self, command: &mut Command) -> Result<Spawned, ReaperError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut waiters = self.waiters.lock().expect("reaper waiters");
        let child = command.spawn().map_err(|source| ReaperError::Spawn {
            program: program.clone(),
            source,
        })?;
        // Dropping the std Child neither waits nor kills: the reaper owns the waiting.
        let pid = Pid::from_raw(child.id() as i32);
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        // Opened before anything can reap the child (the lock is held), so it names it.
        let pidfd = pidfd_open(pid).map_err(|source| {
            // Not supervised without one: ended now, and reaped as registered.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            ReaperError::Pidfd {
                program: program.clone(),
                source,
            }
        });
        drop(waiters);
        // The child may have exited before it was registered; look again.
        self.reap();
        let pidfd = pidfd?;
        Ok(Spawned {
            child,
            pid,
            pidfd,
            exit: rx,
        })
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

fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just opened and is owned here alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn read_to_end<R: Read + Send + 'static>(
    pipe: Option<R>,
) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>> {
    tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_end(&mut bytes)?;
        }
        Ok(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_collects_both_streams_and_the_exit_status() {
        let reaper = Reaper::start(Scope::Spawned).unwrap();
        let mut command = Command::new("sh");
        // More than a pipe's buffer on both streams: neither may block the other.
        command.args([
            "-c",
            "head -c 200000 /dev/zero | tr '\\0' o; head -c 100000 /dev/zero | tr '\\0' e >&2; exit 7",
        ]);
        let out = reaper.output(command).await.unwrap();
        assert!(
            matches!(out.status, WaitStatus::Exited(_, 7)),
            "{:?}",
            out.status
        );
        assert_eq!(out.stdout, vec![b'o'; 200_000]);
        assert_eq!(out.stderr, vec![b'e'; 100_000]);
    }

    #[tokio::test]
    async fn output_says_which_program_did_not_start() {
        let reaper = Reaper::start(Scope::Spawned).unwrap();
        let err = reaper
            .output(Command::new("/nonexistent/letterbox-test"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/letterbox-test"),
            "{err}"
        );
    }
}

//! How the agent stops: waiting for a request (a command, SIGTERM, ctrl-alt-del), stopping
//! the units and, as PID 1, every other process, then rebooting or powering off.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::{InitError, Mode};
use crate::agent::{Agent, Shutdown};
use crate::supervise::log::{logger, FLUSH_LIMIT};

/// How long the remaining processes get after SIGTERM at shutdown, before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the main loop reports that it turns.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The signals that stop or reload the agent, watched from boot on.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn watch() -> Result<Signals, InitError> {
        let watch = |kind, name| signal(kind).map_err(|e| InitError::Signal(name, e));
        Ok(Signals {
            term: watch(SignalKind::terminate(), "SIGTERM")?,
            int: watch(SignalKind::interrupt(), "SIGINT")?,
            hup: watch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The main loop: serves SIGHUP (a zone reload) until a shutdown is asked for, and says
    /// which; calls `turned` every few seconds (the watchdog's heartbeat).
    pub async fn wait_for_shutdown(
        &mut self,
        agent: &Arc<Agent>,
        requests: &mut mpsc::UnboundedReceiver<Shutdown>,
        mut turned: impl FnMut(),
    ) -> Shutdown {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => turned(),
                Some(how) = requests.recv() => return how,
                _ = self.term.recv() => {
                    // As PID 1, SIGTERM is how a supervisor (or `kill 1`) asks the appliance
                    // to stop: power off. In run mode it only ends the agent.
                    info!("SIGTERM received");
                    return Shutdown::PowerOff;
                }
                _ = self.int.recv() => {
                    // The kernel sends PID 1 SIGINT for ctrl-alt-del: the traditional reboot.
                    info!("SIGINT received");
                    return Shutdown::Reboot;
                }
                _ = self.hup.recv() => {
                    info!("SIGHUP received: reloading the zone");
                    match agent.reload_dns().await {
                        Ok(done) => info!("{done}"),
                        Err(e) => warn!("DNS reload: {}", crate::error_chain(&e)),
                    }
                }
            }
        }
    }
}

/// Stops the units, last started first, and as PID 1 whatever else still runs.
pub async fn stop_everything(agent: &Agent, mode: Mode) {
    info!("shutting down: stopping units");
    agent.stop_units().await;
    if mode == Mode::Pid1 {
        stop_remaining_processes().await;
    }
}

/// PID 1 only: whatever is still running (orphans, helpers) gets SIGTERM and, if still
/// there after the grace period, SIGKILL. The reaper collects them meanwhile, so none is
/// left (not even a zombie) when the disks are synced.
async fn stop_remaining_processes() {
    let everyone = Pid::from_raw(-1);
    if kill(everyone, Signal::SIGTERM).is_err() {
        return;
    }
    info!("sent SIGTERM to the remaining processes");
    if wait_until_none_left(SHUTDOWN_GRACE).await {
        info!("every other process has ended");
        return;
    }
    warn!(
        "processes left after {}s: sending SIGKILL",
        SHUTDOWN_GRACE.as_secs()
    );
    let _ = kill(everyone, Signal::SIGKILL);
    if wait_until_none_left(SHUTDOWN_GRACE).await {
        info!("every other process has ended");
    } else {
        error!("processes left after SIGKILL; going on");
    }
}

/// Whether every other user-space process (zombies included) was gone within `limit`.
/// Not `kill(-1, 0)`: it also reaches kernel threads, which never end.
async fn wait_until_none_left(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while other_processes_exist() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Whether /proc lists a process other than PID 1 that is not a kernel thread.
fn other_processes_exist() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1)
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !is_kernel_thread(&stat))
        })
}

/// PF_KTHREAD in the flags of a /proc/PID/stat line (field 9; the name, field 2, may
/// hold spaces and parentheses, so fields are counted after its last ')').
fn is_kernel_thread(stat: &str) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// Syncs, then reboots or powers off (PID 1) or exits (run mode).
pub fn finish(mode: Mode, how: Shutdown) -> ExitCode {
    nix::unistd::sync();
    match mode {
        Mode::Host => {
            info!("run mode: exiting instead of a {}", how.describe());
            logger().flush_within(FLUSH_LIMIT);
            ExitCode::SUCCESS
        }
        Mode::Pid1 => reboot_forever(how),
    }
}

/// PID 1 never returns (the kernel would panic): syncs, remounts /data read-only and
/// reboots or powers off; if the kernel refuses, tries the other, and failing both waits
/// for ever with the reason logged.
pub fn reboot_forever(how: Shutdown) -> ! {
    nix::unistd::sync();
    crate::early_boot::data::remount_read_only();
    super::watchdog::disarm();
    let other = match how {
        Shutdown::Reboot => Shutdown::PowerOff,
        Shutdown::PowerOff => Shutdown::Reboot,
    };
    for attempt in [how, other] {
        info!(
            "{}",
            match attempt {
                Shutdown::Reboot => "rebooting",
                Shutdown::PowerOff => "powering off",
            }
        );
        logger().flush_within(FLUSH_LIMIT);
        let result = reboot(match attempt {
            Shutdown::Reboot => RebootMode::RB_AUTOBOOT,
            Shutdown::PowerOff => RebootMode::RB_POWER_OFF,
        });
        let Err(e) = result;
        error!("{} failed: {e}", attempt.describe());
    }
    error!("cannot reboot or power off: waiting for a power cycle");
    logger().flush_within(FLUSH_LIMIT);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_threads_are_told_from_processes_by_their_flags() {
        // kthreadd (PID 2) is a kernel thread on every Linux; this test is a process.
        let kthreadd = std::fs::read_to_string("/proc/2/stat").unwrap();
        assert!(is_kernel_thread(&kthreadd), "{kthreadd}");
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(!is_kernel_thread(&own), "{own}");
        // A name may hold ") " and digits: fields are counted after the last ')'.
        let tricky = "42 (a) 0 0 0 0 0 2097152 x) S 1 42 42 0 -1 4194560 0 0";
        assert!(!is_kernel_thread(tricky));
        let kthread = "7 (kworker/0:1) I 2 0 0 0 -1 69238880 0 0";
        assert!(is_kernel_thread(kthread));
    }
}

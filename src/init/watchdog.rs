//! The hardware watchdog (the Pi's bcm2835_wdt): a hang becomes a reboot. The agent's
//! main loop keeps a deadline moving; a task pets the device while the deadline is ahead,
//! so a main loop that stops turning stops the petting and the watchdog resets the board.
//!
//! The kernel command line picks the device: `letterbox.watchdog=off`,
//! `letterbox.watchdog=/dev/watchdogN` (default `/dev/watchdog0`) or
//! `letterbox.watchdog=softdog` (the kernel's software watchdog, which early boot then
//! loads). QEMU's raspi3b resets the moment its watchdog is armed, so `letterbox qemu` and
//! the tests turn it off, or test with softdog.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use log::{error, info, warn};

/// The kernel command-line switch.
pub const SWITCH: &str = "letterbox.watchdog";
const DEFAULT_DEVICE: &str = "/dev/watchdog0";
/// The bcm2835 watchdog's longest timeout is a little under 16 s.
const TIMEOUT_SECONDS: i32 = 15;
const PET_EVERY: Duration = Duration::from_secs(5);

/// Which watchdog, from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Off,
    Device(PathBuf),
    /// Whichever /dev/watchdogN the softdog module registered.
    Softdog,
}

/// The choice in a kernel command line: the last `letterbox.watchdog=` wins; without one,
/// the Pi's own watchdog. A value that is neither `off` nor a /dev path is an error.
pub fn choice(cmdline: &str) -> Result<Choice, String> {
    let prefix = format!("{SWITCH}=");
    match cmdline
        .split_whitespace()
        .rev()
        .find_map(|arg| arg.strip_prefix(&prefix))
    {
        None => Ok(Choice::Device(DEFAULT_DEVICE.into())),
        Some("off") => Ok(Choice::Off),
        Some("softdog") => Ok(Choice::Softdog),
        Some(path) if path.starts_with("/dev/") => Ok(Choice::Device(path.into())),
        Some(other) => Err(format!(
            "{SWITCH}={other}: expected `off`, `softdog` or a device such as {DEFAULT_DEVICE}"
        )),
    }
}

nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, nix::libc::c_int);

struct Device {
    file: File,
    path: PathBuf,
    /// The timeout the driver took (it may round), or None when it refused ours.
    timeout: Option<i32>,
}

/// The open watchdog, once armed; [`disarm`] reaches it from the reboot path.
static ARMED: OnceLock<Mutex<Option<Device>>> = OnceLock::new();

/// The deadline the main loop keeps moving; petting stops once it has passed.
#[derive(Clone)]
pub struct Watchdog {
    deadline: Arc<Mutex<Instant>>,
}

impl Watchdog {
    /// Opens and arms the chosen device and starts petting it until `first_deadline`;
    /// None when it is off or cannot be opened (logged: the appliance runs without it).
    pub fn arm(choice: Choice, first_deadline: Duration) -> Option<Watchdog> {
        let path = match choice {
            Choice::Off => {
                info!("watchdog: off ({SWITCH}=off)");
                return None;
            }
            Choice::Device(path) => path,
            Choice::Softdog => match softdog_device() {
                Some(path) => path,
                None => {
                    warn!("watchdog: no softdog device registered; running without one");
                    return None;
                }
            },
        };
        let device = match open(&path) {
            Ok(device) => device,
            Err(e) => {
                warn!("watchdog: {}: {e}; running without one", path.display());
                return None;
            }
        };
        info!(
            "watchdog: {} armed ({}), petted every {} s while the agent runs",
            path.display(),
            device
                .timeout
                .map_or_else(|| "the driver's timeout".to_string(), |t| format!("{t} s")),
            PET_EVERY.as_secs()
        );
        let _ = ARMED.set(Mutex::new(Some(device)));
        let watchdog = Watchdog {
            deadline: Arc::new(Mutex::new(Instant::now() + first_deadline)),
        };
        tokio::spawn(watchdog.clone().pet_while_alive());
        Some(watchdog)
    }

    /// Keeps the petting going until `from_now` has passed.
    pub fn keep_alive_for(&self, from_now: Duration) {
        *self.deadline.lock().expect("watchdog deadline") = Instant::now() + from_now;
    }

    async fn pet_while_alive(self) {
        let mut ticks = tokio::time::interval(PET_EVERY);
        let mut stopped = false;
        loop {
            ticks.tick().await;
            let alive = Instant::now() < *self.deadline.lock().expect("watchdog deadline");
            if alive {
                pet();
                stopped = false;
            } else if !stopped {
                error!("watchdog: the agent's main loop is not turning: no more petting, the board will reset");
                stopped = true;
            }
        }
    }
}

/// The /dev/watchdogN whose driver says it is the software watchdog.
fn softdog_device() -> Option<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir("/sys/class/watchdog")
        .ok()?
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let identity = std::fs::read_to_string(
            Path::new("/sys/class/watchdog")
                .join(&name)
                .join("identity"),
        );
        (identity.ok()?.trim() == "Software Watchdog").then(|| Path::new("/dev").join(&name))
    })
}

fn open(path: &Path) -> std::io::Result<Device> {
    // O_CLOEXEC (std's default): a child holding it open would keep it from being disarmed.
    let file = File::options().write(true).open(path)?;
    let mut timeout = TIMEOUT_SECONDS;
    // SAFETY: the fd is open for the call; the pointer is to a live c_int, which the
    // driver overwrites with the timeout it took.
    let timeout = match unsafe { wdioc_settimeout(file.as_raw_fd(), &mut timeout) } {
        Ok(_) => Some(timeout),
        Err(e) => {
            warn!(
                "watchdog: {}: cannot set a {TIMEOUT_SECONDS} s timeout ({e}); keeping the driver's",
                path.display()
            );
            None
        }
    };
    Ok(Device {
        file,
        path: path.to_path_buf(),
        timeout,
    })
}

fn pet() {
    let Some(armed) = ARMED.get() else { return };
    if let Some(device) = armed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_mut()
    {
        if let Err(e) = device.file.write_all(b"\0") {
            error!("watchdog: cannot pet {}: {e}", device.path.display());
        }
    }
}

/// Before a reboot or power-off: the magic close ('V', then close) stops the countdown,
/// so a power-off is not turned into a reset. Nothing when no watchdog was armed.
pub fn disarm() {
    let Some(armed) = ARMED.get() else { return };
    let Some(mut device) = armed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    else {
        return;
    };
    match device.file.write_all(b"V") {
        Ok(()) => info!("watchdog: {} disarmed", device.path.display()),
        Err(e) => error!("watchdog: cannot disarm {}: {e}", device.path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_picks_the_watchdog() {
        let base = "console=ttyS1,115200 root=PARTUUID=0a1b2c3d-02 panic=10";
        assert_eq!(choice(base), Ok(Choice::Device("/dev/watchdog0".into())));
        assert_eq!(
            choice(&format!("{base} letterbox.watchdog=off")),
            Ok(Choice::Off)
        );
        assert_eq!(
            choice(&format!(
                "letterbox.watchdog=off {base} letterbox.watchdog=/dev/watchdog1"
            )),
            Ok(Choice::Device("/dev/watchdog1".into()))
        );
        let wrong = choice("letterbox.watchdog=yes").unwrap_err();
        assert!(
            wrong.contains("expected `off`, `softdog` or a device"),
            "{wrong}"
        );
        assert_eq!(choice("letterbox.watchdog=softdog"), Ok(Choice::Softdog));
    }
}

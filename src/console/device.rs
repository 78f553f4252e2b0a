//! Finding and setting up the console's tty.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::termios::{self, BaudRate, SetArg, SpecialCharacterIndices};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "cannot find the UART behind `{alias}`: neither /dev/{alias} nor a device-tree alias \
         leads to a tty; expected a name such as ttyAMA0 or ttyS1, or a /dev path"
    )]
    NoSuchAlias { alias: String },
    #[error("cannot open console {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the line discipline of {path}")]
    Termios {
        path: String,
        #[source]
        source: nix::Error,
    },
}

/// Resolves the configured console: a /dev path as given, a tty name (`ttyAMA0`) under
/// /dev, or the board alias `serial0` (the GPIO 14/15 UART) through /dev/serial0, else the
/// kernel's serial console (cmdline.txt puts it on that UART), else the device tree.
pub fn resolve(device: &str) -> Result<PathBuf, DeviceError> {
    if device.starts_with('/') {
        return Ok(PathBuf::from(device));
    }
    let dev = Path::new("/dev").join(device);
    if !device.starts_with("serial") || dev.exists() {
        return Ok(dev.canonicalize().unwrap_or(dev));
    }
    if device == "serial0" {
        let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
        if let Some(tty) = serial_console(&active) {
            return Ok(Path::new("/dev").join(tty));
        }
    }
    tty_of_alias(
        device,
        Path::new("/proc/device-tree"),
        Path::new("/sys/class/tty"),
    )
    .map(|tty| Path::new("/dev").join(tty))
    .ok_or_else(|| DeviceError::NoSuchAlias {
        alias: device.into(),
    })
}

/// The kernel's console when it is a UART (the last of `/sys/class/tty/console/active`,
/// which is /dev/console), not a virtual terminal.
fn serial_console(active: &str) -> Option<&str> {
    let last = active.split_whitespace().last()?;
    let virtual_terminal = last
        .strip_prefix("tty")
        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
    (!virtual_terminal).then_some(last)
}

/// The tty whose device-tree node is the one `aliases/<alias>` names. In the mainline
/// device trees Debian ships, `serial0` is the PL011 (ttyAMA0), which drives Bluetooth on
/// a Pi 3, and `serial1` the mini UART on GPIO 14/15 (bcm2837-rpi-3-b.dtb: aliases
/// serial0 = /soc/serial@7e201000, serial1 = /soc/serial@7e215040, stdout-path serial1).
/// Raspberry Pi OS's trees swap them; hence /dev/serial0 and the kernel console come first.
fn tty_of_alias(alias: &str, device_tree: &Path, class_tty: &Path) -> Option<String> {
    let node = std::fs::read_to_string(device_tree.join("aliases").join(alias)).ok()?;
    let node = node.trim_end_matches('\0').trim_start_matches('/');
    let wanted = device_tree.join(node).canonicalize().ok()?;
    std::fs::read_dir(class_tty)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let of_node = entry.path().join("device/of_node").canonicalize().ok()?;
            (of_node == wanted).then(|| entry.file_name().to_string_lossy().into_owned())
        })
}

/// Opens the tty for the login (non-blocking, for the async reader) and sets the line:
/// the baud rate, 8N1, no kernel echo or line editing (the console edits lines itself, so
/// it can hide passwords) and no signals from ^C. It is not made the controlling terminal:
/// the shell runs inside the agent, so there is no job control to give it, and PID 1 must
/// not get SIGHUP when the line hangs up.
pub fn open_for_login(path: &Path, baud: u32) -> Result<File, DeviceError> {
    let file = open(path, nix::libc::O_NONBLOCK)?;
    let display = || path.display().to_string();
    let mut t = termios::tcgetattr(&file).map_err(|source| DeviceError::Termios {
        path: display(),
        source,
    })?;
    termios::cfmakeraw(&mut t);
    t.control_flags |= termios::ControlFlags::CLOCAL | termios::ControlFlags::CREAD;
    t.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    t.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    termios::cfsetspeed(&mut t, baud_rate(baud)).map_err(|source| DeviceError::Termios {
        path: display(),
        source,
    })?;
    termios::tcsetattr(&file, SetArg::TCSANOW, &t).map_err(|source| DeviceError::Termios {
        path: display(),
        source,
    })?;
    Ok(file)
}

/// A second, blocking handle for log lines. Only the logger's writer thread writes to it,
/// so a stalled line holds up that thread alone (and lines are dropped, counted).
pub fn open_for_log(path: &Path) -> Result<File, DeviceError> {
    open(path, 0)
}

/// `path` if it opens, else `fallback` if that does, with why `path` could not be used;
/// the error of `path` when neither opens.
pub fn usable_or(
    path: &Path,
    fallback: &Path,
) -> Result<(PathBuf, Option<DeviceError>), DeviceError> {
    match open_for_log(path) {
        Ok(_) => Ok((path.to_path_buf(), None)),
        Err(e) if path != fallback => match open_for_log(fallback) {
            Ok(_) => Ok((fallback.to_path_buf(), Some(e))),
            Err(_) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Whether `console` is the tty that stderr writes to: the same device, or stderr is the
/// kernel's /dev/console and `console` its active tty (`/sys/class/tty/console/active`,
/// the last one listed is /dev/console).
pub fn is_stderr_tty(console: &File, console_path: &Path) -> bool {
    const DEV_CONSOLE: u64 = nix::sys::stat::makedev(5, 1);
    let rdev = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).ok().map(|s| s.st_rdev);
    let stderr = rdev(std::io::stderr().as_fd());
    let ours = rdev(console.as_fd());
    if stderr.is_none() || stderr == Some(0) {
        return false;
    }
    if stderr == ours {
        return true;
    }
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let name = console_path.canonicalize().ok();
    let name = name
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy());
    stderr == Some(DEV_CONSOLE)
        && name.is_some_and(|name| active.split_whitespace().last() == Some(&*name))
}

fn open(path: &Path, flags: i32) -> Result<File, DeviceError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY | flags)
        .open(path)
        .map_err(|source| DeviceError::Open {
            path: path.display().to_string(),
            source,
        })
}

/// The termios speed of a rate the configuration accepted (it refuses any other).
fn baud_rate(baud: u32) -> BaudRate {
    match baud {
        1200 => BaudRate::B1200,
        2400 => BaudRate::B2400,
        4800 => BaudRate::B4800,
        9600 => BaudRate::B9600,
        19200 => BaudRate::B19200,
        38400 => BaudRate::B38400,
        57600 => BaudRate::B57600,
        115_200 => BaudRate::B115200,
        230_400 => BaudRate::B230400,
        460_800 => BaudRate::B460800,
        other => {
            log::warn!("baud rate {other} has no termios speed; using 115200");
            BaudRate::B115200
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(resolve("/dev/pts/7").unwrap(), PathBuf::from("/dev/pts/7"));
        assert_eq!(resolve("ttyAMA0").unwrap(), PathBuf::from("/dev/ttyAMA0"));
    }

    #[test]
    fn the_kernel_console_stands_in_for_serial0_unless_it_is_a_virtual_terminal() {
        assert_eq!(serial_console("tty0 ttyS1\n"), Some("ttyS1"));
        assert_eq!(serial_console("ttyAMA0\n"), Some("ttyAMA0"));
        assert_eq!(serial_console("ttyS0 tty1\n"), None);
        assert_eq!(serial_console(""), None);
    }

    #[test]
    fn follows_the_device_tree_alias_to_its_tty() {
        // Raspberry Pi OS's Pi 3 tree: serial0 -> the mini UART, whose tty is ttyS1.
        let root = tempfile::tempdir().unwrap();
        let dt = root.path().join("device-tree");
        std::fs::create_dir_all(dt.join("aliases")).unwrap();
        std::fs::create_dir_all(dt.join("soc/serial@7e215040")).unwrap();
        std::fs::create_dir_all(dt.join("soc/serial@7e201000")).unwrap();
        std::fs::write(dt.join("aliases/serial0"), "/soc/serial@7e215040\0").unwrap();
        let class = root.path().join("class-tty");
        for (tty, node) in [("ttyS1", "serial@7e215040"), ("ttyAMA0", "serial@7e201000")] {
            std::fs::create_dir_all(class.join(tty).join("device")).unwrap();
            std::os::unix::fs::symlink(
                dt.join("soc").join(node),
                class.join(tty).join("device/of_node"),
            )
            .unwrap();
        }
        assert_eq!(
            tty_of_alias("serial0", &dt, &class).as_deref(),
            Some("ttyS1")
        );
        assert_eq!(tty_of_alias("serial1", &dt, &class), None);
    }

    #[test]
    fn a_console_that_does_not_open_falls_back() {
        let pair = nix::pty::openpty(None, None).unwrap();
        let fallback = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&pair.slave)
        ))
        .unwrap();
        let missing = Path::new("/dev/ttyLETTERBOXMISSING");
        let (path, why) = usable_or(missing, &fallback).unwrap();
        assert_eq!(path, fallback);
        let why = why.unwrap().to_string();
        assert!(why.contains("/dev/ttyLETTERBOXMISSING"), "{why}");
        // A console that opens is used as it is.
        let (path, why) = usable_or(&fallback, missing).unwrap();
        assert_eq!(path, fallback);
        assert!(why.is_none());
        // Neither: the configured one's error.
        let err = usable_or(missing, Path::new("/dev/ttyLETTERBOXGONE")).unwrap_err();
        assert!(err.to_string().contains("ttyLETTERBOXMISSING"), "{err}");
    }
}

//! The ext4 data partition across power cuts: checked with `e2fsck -p` before it is
//! mounted, mounted with `errors=remount-ro`, a tmpfs in its place (and the repair command
//! on the console) when it still will not mount, and remounted read-only before a reboot
//! or power-off so the next boot finds it clean.

use std::path::Path;
use std::process::Command;

use log::{error, info, warn};
use nix::mount::{mount, MsFlags};

use super::disk;
use super::mounts::{mount_at, MountError};
use crate::paths::DATA_DIR;

/// Debian's e2fsck, on the root filesystem (the image includes e2fsprogs): /usr/sbin
/// since trixie's move to /usr, /sbin before it (the image's /sbin is a real directory
/// when a package ships files there).
const E2FSCK: &[&str] = &["/usr/sbin/e2fsck", "/sbin/e2fsck"];
/// A Pi has no real-time clock: until SNTP sets it the clock says 1970, and e2fsck would
/// take every time stamp on the card for one in the future and "fix" it at every boot.
const E2FSCK_CONF: &str = "[options]\n\tbroken_system_clock = true\n";
const E2FSCK_CONF_PATH: &str = "/run/e2fsck.conf";
/// An error makes the filesystem read-only instead of carrying on and spreading it.
const EXT4_OPTIONS: &str = "errors=remount-ro";

/// What [`mount`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// The data partition, writable.
    Partition,
    /// A tmpfs: nothing written is kept across a reboot.
    Tmpfs,
}

/// Checks the data partition, mounts it on /data and grows its filesystem; when it will
/// not mount, says so with the command that repairs it and mounts a tmpfs instead, so the
/// console and DNS still come up. Errs only when not even the tmpfs mounts.
pub fn mount_data(device: &str) -> Result<Data, MountError> {
    check(device);
    match mount_at(
        device,
        DATA_DIR,
        "ext4",
        MsFlags::MS_NOATIME | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        EXT4_OPTIONS,
    ) {
        Ok(()) => {
            if let Err(e) = disk::grow_ext4(DATA_DIR, device) {
                warn!(
                    "early boot: data filesystem not grown: {}",
                    crate::error_chain(&e)
                );
            }
            Ok(Data::Partition)
        }
        Err(e) => {
            error!(
                "early boot: cannot mount the data partition {device}: {}",
                crate::error_chain(&e)
            );
            error!("early boot: {}", repair_advice(device));
            error!("early boot: /data is a tmpfs: NOTHING WRITTEN NOW IS KEPT ACROSS A REBOOT");
            mount_at(
                "tmpfs",
                DATA_DIR,
                "tmpfs",
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                "mode=0755",
            )?;
            Ok(Data::Tmpfs)
        }
    }
}

/// How to repair the data partition: on another Linux machine, since the appliance's
/// console has no shell.
fn repair_advice(device: &str) -> String {
    let partition = device.rsplit_once('p').map_or("3", |(_, n)| n);
    format!(
        "to repair {device}, put the SD card in a Linux machine and run \
         `e2fsck -f /dev/sdX{partition}` (sdX: the card's device, see `lsblk`)"
    )
}

/// `e2fsck -p` (preen: fixes what is safe to fix without asking) on the unmounted data
/// partition. Whatever it says is logged; mounting is tried in any case, since the kernel
/// is the last judge and `errors=remount-ro` keeps a damaged filesystem from getting worse.
fn check(device: &str) {
    let Some(e2fsck) = E2FSCK.iter().find(|path| Path::new(path).exists()) else {
        warn!("early boot: no e2fsck in the root filesystem: {device} not checked");
        return;
    };
    if let Err(e) = std::fs::write(E2FSCK_CONF_PATH, E2FSCK_CONF) {
        warn!("early boot: cannot write {E2FSCK_CONF_PATH}: {e}");
    }
    info!("early boot: checking the data partition {device} (e2fsck -p)");
    let output = match Command::new(e2fsck)
        .args(["-p", device])
        .env("E2FSCK_CONFIG", E2FSCK_CONF_PATH)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            error!("early boot: cannot run {e2fsck}: {e}");
            return;
        }
    };
    let said = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        info!("e2fsck: {line}");
    }
    let code = output.status.code();
    match code.map(FsckResult::from_exit_code) {
        Some(FsckResult::Clean) => info!("early boot: data partition {device} is clean"),
        Some(FsckResult::Repaired) => {
            warn!("early boot: e2fsck repaired the data partition {device}")
        }
        Some(FsckResult::Unrepaired) | None => {
            error!(
                "early boot: e2fsck could not repair {device} ({}); mounting it anyway",
                code.map_or_else(|| "killed".to_string(), |c| format!("exit status {c}"))
            );
            error!("early boot: {}", repair_advice(device));
        }
    }
}

/// e2fsck's exit status (e2fsck(8)), as far as boot cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FsckResult {
    Clean,
    /// 1 and 2: errors were corrected (2 asks for a reboot only when it was the root).
    Repaired,
    /// 4 and up: errors left, or e2fsck itself failed.
    Unrepaired,
}

impl FsckResult {
    fn from_exit_code(code: i32) -> FsckResult {
        match code {
            0 => FsckResult::Clean,
            1..=3 => FsckResult::Repaired,
            _ => FsckResult::Unrepaired,
        }
    }
}

/// Before a reboot or power-off: /data read-only, so its journal is committed and the
/// filesystem marked clean (sync alone leaves it "needs recovery"). Nothing when /data is
/// not a mount point (the agent in a namespace, or `letterbox run`).
pub fn remount_read_only() {
    if !is_mounted(DATA_DIR) {
        return;
    }
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    match mount(None::<&str>, DATA_DIR, None::<&str>, flags, None::<&str>) {
        Ok(()) => info!("{DATA_DIR} remounted read-only"),
        Err(e) => error!("cannot remount {DATA_DIR} read-only: {e}"),
    }
}

fn is_mounted(dir: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|info| info.lines().any(|line| line.split(' ').nth(4) == Some(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2fsck_exit_codes_say_clean_repaired_or_not() {
        assert_eq!(FsckResult::from_exit_code(0), FsckResult::Clean);
        assert_eq!(FsckResult::from_exit_code(1), FsckResult::Repaired);
        assert_eq!(FsckResult::from_exit_code(2), FsckResult::Repaired);
        assert_eq!(FsckResult::from_exit_code(4), FsckResult::Unrepaired);
        assert_eq!(FsckResult::from_exit_code(8), FsckResult::Unrepaired);
    }

    #[test]
    fn the_repair_advice_names_the_partition_number() {
        let advice = repair_advice("/dev/mmcblk0p3");
        assert!(advice.contains("e2fsck -f /dev/sdX3"), "{advice}");
    }
}

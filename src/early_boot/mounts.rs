//! Mounting: the one helper that creates a mount point and mounts on it, and the pseudo
//! filesystems PID 1 mounts with it before anything else can work.

use std::path::Path;

use nix::mount::{mount, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {path}")]
    MountPoint {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount {what} on {target}")]
    Mount {
        what: String,
        target: String,
        #[source]
        source: nix::Error,
    },
}

/// Creates `target` if needed and mounts `what` (a device, or the filesystem's name for
/// pseudo filesystems) on it; empty `data` passes none.
pub fn mount_at(
    what: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> Result<(), MountError> {
    std::fs::create_dir_all(target).map_err(|source| MountError::MountPoint {
        path: target.into(),
        source,
    })?;
    let data = (!data.is_empty()).then_some(data);
    mount(Some(what), target, Some(fstype), flags, data).map_err(|source| MountError::Mount {
        what: what.into(),
        target: target.into(),
        source,
    })
}

struct PseudoFs {
    path: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: /proc first, because "already mounted" is read from /proc/self/mountinfo;
/// /sys before the cgroup2 hierarchy on it (runc, under containerd, needs cgroup v2).
const PSEUDO_FILESYSTEMS: [PseudoFs; 7] = [
    PseudoFs {
        path: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    PseudoFs {
        path: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    PseudoFs {
        path: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    PseudoFs {
        path: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    PseudoFs {
        path: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "mode=0620,ptmxmode=0666",
    },
    PseudoFs {
        path: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    PseudoFs {
        path: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
];

/// What [`mount_pseudo_filesystems`] did.
#[derive(Debug, Default)]
pub struct Mounted {
    pub mounted: Vec<&'static str>,
    pub failed: Vec<MountError>,
}

/// Mounts /proc, /sys, /sys/fs/cgroup, /dev, /dev/pts, /run and /tmp unless the same
/// filesystem type is already mounted there. Every one is attempted: a failed /sys must not cost the console
/// its /dev.
pub fn mount_pseudo_filesystems() -> Mounted {
    let mut result = Mounted::default();
    for fs in &PSEUDO_FILESYSTEMS {
        if already_mounted(fs) {
            continue;
        }
        match mount_at(fs.fstype, fs.path, fs.fstype, fs.flags, fs.data) {
            Ok(()) => result.mounted.push(fs.path),
            Err(e) => result.failed.push(e),
        }
    }
    result
}

fn already_mounted(fs: &PseudoFs) -> bool {
    if fs.fstype == "proc" {
        // A /proc inherited from another PID namespace shows the wrong processes (its
        // /proc/self is not us): that one is mounted over.
        return Path::new("/proc/self/stat").exists() && proc_is_ours();
    }
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // The last entry for a mount point is the one on top.
    mount_type_at(&mountinfo, fs.path).as_deref() == Some(fs.fstype)
}

fn proc_is_ours() -> bool {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<i32>().ok())
        == Some(std::process::id() as i32)
}

/// The filesystem type on top at `path`, from mountinfo(5) text.
fn mount_type_at(mountinfo: &str, path: &str) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some((*fields.get(4)?, *fields.get(dash + 1)?))
        })
        .rfind(|(point, _)| *point == path)
        .map(|(_, fstype)| fstype.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_filesystem_on_top() {
        let info = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
25 1 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,mode=755
40 25 0:30 / /dev rw - tmpfs tmpfs rw
";
        assert_eq!(mount_type_at(info, "/dev").as_deref(), Some("tmpfs"));
        assert_eq!(mount_type_at(info, "/proc").as_deref(), Some("proc"));
        assert_eq!(mount_type_at(info, "/run"), None);
    }
}

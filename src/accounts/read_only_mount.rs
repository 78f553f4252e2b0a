//! Writing a file on a filesystem mounted read-only: on the appliance, letterbox.toml is
//! on the FAT boot partition, which stays read-only (a power cut cannot hurt a filesystem
//! nobody writes) except for the moment an account command writes the file.

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use super::disk_space::mount_point;

/// Runs `write` (which writes `path`); when it fails because `path`'s filesystem is
/// mounted read-only, remounts that filesystem read-write, runs `write` again, and
/// remounts it read-only (also when the write failed). The write's outcome is the
/// result: a filesystem left read-write is only warned about, since the file changed.
pub fn write_through(path: &Path, write: impl Fn() -> std::io::Result<()>) -> std::io::Result<()> {
    match write() {
        Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {}
        done => return done,
    }
    let point = mount_point(path)?;
    let flags = kept_flags(&point)?;
    remount(&point, flags)?;
    log::info!(
        "{} remounted read-write to write {}",
        point.display(),
        path.display()
    );
    let written = write();
    if let Err(e) = remount(&point, flags | MsFlags::MS_RDONLY) {
        log::warn!("{} stays read-write: {e}", point.display());
    }
    written
}

/// The mount's flags a remount must repeat, or the kernel clears them.
fn kept_flags(point: &Path) -> std::io::Result<MsFlags> {
    let found = statvfs(point)?.flags();
    let mut flags = MsFlags::empty();
    for (has, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if found.contains(has) {
            flags |= keep;
        }
    }
    Ok(flags)
}

fn remount(point: &Path, flags: MsFlags) -> std::io::Result<()> {
    mount(
        None::<&str>,
        point,
        None::<&str>,
        MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .map_err(std::io::Error::from)
}

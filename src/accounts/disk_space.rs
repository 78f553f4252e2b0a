//! A full filesystem told as such: an account command that runs out of space names the
//! filesystem to free space on, rather than passing on the bare "os error 28".

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Whether `error` says the filesystem (or the user's quota on it) is full. By kind, not
/// by errno: tempfile wraps the errno in an error of its own that keeps only the kind.
pub fn is_full(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    matches!(error.kind(), StorageFull | QuotaExceeded)
}

/// Whether `error` or any error under it is [`is_full`].
pub fn full_in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source())
        .any(|e| e.downcast_ref::<std::io::Error>().is_some_and(is_full))
}

/// The top directory of the filesystem `path` is on: the highest ancestor on its device.
pub fn mount_point(path: &Path) -> std::io::Result<PathBuf> {
    let path = std::fs::canonicalize(path)?;
    let device = std::fs::metadata(&path)?.dev();
    let mut point = path.clone();
    for ancestor in path.ancestors().skip(1) {
        if std::fs::metadata(ancestor)?.dev() != device {
            break;
        }
        point = ancestor.to_path_buf();
    }
    Ok(point)
}

/// [`mount_point`] of `path`, or of its nearest existing ancestor; for messages, so
/// never an error: at worst `path` itself.
pub fn filesystem_of(path: &Path) -> PathBuf {
    path.ancestors()
        .find_map(|p| mount_point(p).ok())
        .unwrap_or_else(|| path.to_path_buf())
}

/// The bytes on `path`'s filesystem that a process without root may still use: a box's
/// Dovecot cannot write into the blocks ext4 reserves for root.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path)?;
    Ok(stat.blocks_available() * stat.fragment_size())
}

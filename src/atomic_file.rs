//! Replacing a file so that readers, and a power cut, see the old or the new contents,
//! never a part of them: a unique temporary file beside it, fsync, rename, then an fsync
//! of the directory so the rename itself is durable.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `contents` to `path` (mode 0644, parent directories created).
pub fn replace(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    replace_mode(path, contents, 0o644)
}

/// [`replace`] with the given permission bits (0600 for a file holding secrets); the file
/// never exists under `path` with any other mode.
pub fn replace_mode(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    replace_with(path, mode, |file| file.write_all(contents))
}

/// Copies the file `from` to `path` as `replace` writes it, streaming (for files too large
/// to hold in memory). A missing `from` leaves `path` as it was.
pub fn copy(from: &Path, path: &Path) -> std::io::Result<()> {
    let mut source = std::fs::File::open(from)?;
    replace_with(path, 0o644, |file| {
        std::io::copy(&mut source, file).map(drop)
    })
}

/// Replaces `path` with what `write` puts in the temporary file (mode `mode`), for
/// contents made in place, such as an image copied and then patched.
pub fn replace_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    // Dropped on any error before `persist`, which removes the temporary file.
    let mut tmp = tempfile::Builder::new()
        .prefix(".letterbox-")
        .tempfile_in(dir)?;
    // The mode first: the temporary file (0600 from tempfile) must never be wider than asked.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents_leaves_no_temporary_and_is_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file")]);
    }

    #[test]
    fn replaces_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        replace(&path, b"old").unwrap();
        replace_mode(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn copies_a_file_over_another_and_a_missing_source_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::write(&from, b"new contents").unwrap();
        let path = dir.path().join("sub/file");
        replace(&path, b"old").unwrap();
        copy(&from, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(copy(&dir.path().join("missing"), &path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file")]);
    }
}

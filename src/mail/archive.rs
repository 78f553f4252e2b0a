//! A deleted account's home, kept: `<backups>/<name>-<YYYY-MM-DD>.tar.zst` (`-2`, `-3`, ...
//! for another the same day, never overwriting one), its entries under `<name>/` with their
//! owners, modes and mtimes, so that `tar --zstd -xpf` as root gives the box's home back.
//!
//! Written to a temporary file beside it, fsynced, then renamed into place with the
//! directory fsynced: an archive under its own name is always whole. [`remove_home`] is
//! separate, for the caller to run only once [`archive_home`] has returned its path.
//!
//! zstd in pure Rust (ruzstd): the agent is cross-built static, without a C library.
//! ruzstd's compressor panics on an I/O error, so it only ever compresses from memory to
//! memory: one zstd frame per `FRAME_INPUT` of tar, which any zstd reader decodes as
//! one stream, with the memory used bounded whatever the size of the Maildir.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ruzstd::encoding::{compress, CompressionLevel};

/// Readable by root only: it holds the account's mail.
const ARCHIVE_MODE: u32 = 0o600;
const BACKUPS_MODE: u32 = 0o700;
/// The tar bytes compressed into each zstd frame.
const FRAME_INPUT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{name:?} cannot name an archive: expected an account name, one path component")]
    InvalidName { name: String },
    #[error("{path} is not a directory: expected an account's home")]
    NotAHome { path: PathBuf },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Archives the home `home` of account `name` into `backups` (made, mode 0700, if missing)
/// as `<name>-<date>.tar.zst`, or `<name>-<date>-N.tar.zst` with the first free N from 2;
/// mode 0600. Returns the archive's path. Sockets, fifos and devices are left out: a
/// Maildir holds none, and a socket cannot be archived.
pub fn archive_home(
    home: &Path,
    backups: &Path,
    name: &str,
    date: time::Date,
) -> Result<PathBuf, ArchiveError> {
    let mut components = Path::new(name).components();
    if !matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) {
        return Err(ArchiveError::InvalidName { name: name.into() });
    }
    let meta = std::fs::symlink_metadata(home).map_err(io("inspecting", home))?;
    if !meta.is_dir() {
        return Err(ArchiveError::NotAHome { path: home.into() });
    }
    let stem = format!(
        "{name}-{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    );
    let first = backups.join(format!("{stem}.tar.zst"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(BACKUPS_MODE)
        .create(backups)
        .map_err(io("creating", backups))?;
    // Removed on drop, so any error below leaves nothing behind.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{stem}."))
        .permissions(std::fs::Permissions::from_mode(ARCHIVE_MODE))
        .tempfile_in(backups)
        .map_err(io("writing", &first))?;
    // Errors name the archive being written: its temporary name is gone with it.
    write_archive(home, name, tmp.as_file(), &first)?;
    tmp.as_file().sync_all().map_err(io("writing", &first))?;

    let (mut tmp, mut n) = (tmp, 1);
    loop {
        let path = match n {
            1 => first.clone(),
            n => backups.join(format!("{stem}-{n}.tar.zst")),
        };
        match tmp.persist_noclobber(&path) {
            Ok(_) => {
                sync_dir(backups)?;
                return Ok(path);
            }
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                tmp = e.file;
                n += 1;
            }
            Err(e) => return Err(io("renaming into place", &path)(e.error)),
        }
    }
}

/// Removes an account's home and everything in it, durably. Run it only once
/// [`archive_home`] has kept the home.
pub fn remove_home(home: &Path) -> Result<(), ArchiveError> {
    std::fs::remove_dir_all(home).map_err(io("removing", home))?;
    match home.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Writes the tar of `home`, its entries under `name/`, zstd-compressed, to `out`
/// (`out_path` names it in errors).
fn write_archive(home: &Path, name: &str, out: &File, out_path: &Path) -> Result<(), ArchiveError> {
    let mut tar = tar::Builder::new(Frames::new(out));
    let appended = append_tree(&mut tar, home, Path::new(name));
    let finished = appended.and_then(|()| {
        tar.finish().map_err(Fault::Write)?;
        tar.get_mut().finish().map_err(Fault::Write)
    });
    finished.map_err(|fault| match fault {
        Fault::Read {
            action,
            path,
            source,
        } => ArchiveError::Io {
            action,
            path,
            source,
        },
        Fault::Write(source) => io("writing", out_path)(source),
    })
}

/// What stopped the archive: the home could not be read, or the archive not written.
enum Fault {
    Read {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    Write(std::io::Error),
}

fn read_fault(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Fault {
    let path = path.to_path_buf();
    move |source| Fault::Read {
        action,
        path,
        source,
    }
}

/// Appends `path` as `name`, then, for a directory, its entries in name order.
fn append_tree(tar: &mut tar::Builder<Frames<'_>>, path: &Path, name: &Path) -> Result<(), Fault> {
    let meta = std::fs::symlink_metadata(path).map_err(read_fault("inspecting", path))?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    let kind = meta.file_type();
    if kind.is_dir() {
        header.set_size(0);
        append(tar, &mut header, name, std::io::empty(), path)?;
        let mut entries = std::fs::read_dir(path)
            .and_then(|dir| {
                dir.map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(read_fault("reading", path))?;
        entries.sort();
        for entry in entries {
            append_tree(tar, &path.join(&entry), &name.join(&entry))?;
        }
    } else if kind.is_file() {
        // O_NOFOLLOW: the file inspected is the file read, not what a link put there points to.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(read_fault("opening", path))?;
        let meta = file.metadata().map_err(read_fault("inspecting", path))?;
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let exact = Exact {
            file: file.take(meta.len()),
            left: meta.len(),
        };
        append(tar, &mut header, name, exact, path)?;
    } else if kind.is_symlink() {
        let target = std::fs::read_link(path).map_err(read_fault("reading", path))?;
        header.set_size(0);
        tar.append_link(&mut header, name, &target)
            .map_err(|source| classify(tar, source, "archiving", path))?;
    }
    Ok(())
}

fn append(
    tar: &mut tar::Builder<Frames<'_>>,
    header: &mut tar::Header,
    name: &Path,
    data: impl Read,
    path: &Path,
) -> Result<(), Fault> {
    tar.append_data(header, name, data)
        .map_err(|source| classify(tar, source, "reading", path))
}

/// An error of the tar builder is the archive's if writing it failed, else the home's.
fn classify(
    tar: &mut tar::Builder<Frames<'_>>,
    source: std::io::Error,
    action: &'static str,
    path: &Path,
) -> Fault {
    if tar.get_mut().write_failed {
        Fault::Write(source)
    } else {
        read_fault(action, path)(source)
    }
}

/// A file's first `left` bytes, its size when inspected: a file that shrank meanwhile is
/// an error, not an entry shorter than its header says.
struct Exact {
    file: std::io::Take<File>,
    left: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file shrank while archived: {} bytes short", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Compresses what is written to it into zstd frames of `FRAME_INPUT` bytes of input each.
struct Frames<'a> {
    out: &'a File,
    pending: Vec<u8>,
    /// Whether an error came from writing `out`, rather than from what was being archived.
    write_failed: bool,
}

impl<'a> Frames<'a> {
    fn new(out: &'a File) -> Frames<'a> {
        Frames {
            out,
            pending: Vec::with_capacity(FRAME_INPUT),
            write_failed: false,
        }
    }

    fn write_frame(&mut self) -> std::io::Result<()> {
        let mut frame = Vec::new();
        compress(
            self.pending.as_slice(),
            &mut frame,
            CompressionLevel::Fastest,
        );
        self.pending.clear();
        self.out
            .write_all(&frame)
            .inspect_err(|_| self.write_failed = true)
    }

    /// Writes the last frame (a tar is never empty, so there is one).
    fn finish(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            self.write_frame()
        }
    }
}

impl Write for Frames<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(FRAME_INPUT - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == FRAME_INPUT {
            self.write_frame()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io {
        action,
        path,
        source,
    }
}

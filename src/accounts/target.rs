//! Where the provisioning file is edited offline: a file, or the boot partition of a built
//! SD image.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{disk_space, BootPartition, ImageError};
use crate::paths::PROVISIONING_FILE;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    File(PathBuf),
    Image(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: no space left on device; free some space on {} and try again (the file is \
         unchanged)", path.display(), filesystem.display()
    )]
    DiskFull { path: PathBuf, filesystem: PathBuf },
    #[error("{name} is not valid UTF-8; expected a UTF-8 text file")]
    NotUtf8 { name: String },
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl Target {
    /// The name errors give the file, with line and column after it.
    pub fn name(&self) -> String {
        match self {
            Target::File(path) => path.display().to_string(),
            Target::Image(image) => format!("{}::{PROVISIONING_FILE}", image.display()),
        }
    }

    pub fn read(&self) -> Result<String, TargetError> {
        let bytes = match self {
            Target::File(path) => std::fs::read(path).map_err(io(path))?,
            // An image is read through a scratch copy beside it, which a full disk refuses.
            Target::Image(image) => BootPartition::open(image)
                .and_then(|boot| boot.read_config())
                .map_err(|e| self.full_disk_named(e.into()))?,
        };
        String::from_utf8(bytes).map_err(|_| TargetError::NotUtf8 { name: self.name() })
    }

    /// Replaces the file atomically (temporary file, fsync, rename), keeping its mode; a
    /// file on a read-only mount (the appliance's boot partition) is written through a
    /// moment's read-write remount. A full filesystem leaves the file as it was.
    pub fn write(&self, text: &str) -> Result<(), TargetError> {
        self.replace(text).map_err(|e| self.full_disk_named(e))
    }

    /// `error`, or, when it is a full disk, that said of the file.
    fn full_disk_named(&self, error: TargetError) -> TargetError {
        match error {
            TargetError::Io { path, source } if disk_space::is_full(&source) => disk_full(path),
            TargetError::Image(ImageError::Io { source, .. }) if disk_space::is_full(&source) => {
                let Target::Image(image) = self else {
                    unreachable!("only an image target gives image errors")
                };
                disk_full(image.clone())
            }
            other => other,
        }
    }

    fn replace(&self, text: &str) -> Result<(), TargetError> {
        match self {
            Target::File(path) => {
                let mode = std::fs::metadata(path)
                    .map_err(io(path))?
                    .permissions()
                    .mode()
                    & 0o7777;
                super::read_only_mount::write_through(path, || {
                    crate::atomic_file::replace_mode(path, text.as_bytes(), mode)
                })
                .map_err(io(path))
            }
            Target::Image(image) => Ok(BootPartition::open(image)?.write_config(text.as_bytes())?),
        }
    }
}

/// The file, not the scratch copy an image is edited in, is what the user knows.
fn disk_full(path: PathBuf) -> TargetError {
    TargetError::DiskFull {
        filesystem: disk_space::filesystem_of(&path),
        path,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TargetError + '_ {
    move |source| TargetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

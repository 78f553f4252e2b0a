//! `letterbox.toml` on the boot partition of an SD image `letterbox build` made: found
//! through the MBR and edited with mtools, as the builder writes it (`image::fs`), with
//! no root, loop device or mount. The image is replaced whole, atomically, and only once
//! its edited boot partition passes `fsck.vfat -n`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths::PROVISIONING_FILE;

/// The MBR type `letterbox build` gives the boot partition: FAT32 with LBA.
const FAT32_LBA: u8 = 0x0c;
/// The volume label `letterbox build` gives it, as the FAT32 boot sector stores it.
const VOLUME_LABEL: &[u8; 11] = b"LETTERBOX  ";
const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a letterbox image: {why}", image.display())]
    NotOurs { image: PathBuf, why: String },
    #[error("cannot run {what}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {stderr}")]
    Tool {
        what: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "the edited boot partition does not pass `fsck.vfat -n`, so {} was left as it \
         was:\n{report}", image.display()
    )]
    Fsck { image: PathBuf, report: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The boot partition of an image checked to be one `letterbox build` made.
#[derive(Debug)]
pub struct BootPartition {
    image: PathBuf,
    /// Byte offset and length of the partition in the image.
    offset: u64,
    len: u64,
}

impl BootPartition {
    /// Finds the boot partition of `image`, refusing an image that is not ours: no MBR,
    /// a first partition that is not FAT32, or a volume that is not LETTERBOX.
    pub fn open(image: &Path) -> Result<BootPartition, ImageError> {
        let not_ours = |why: String| ImageError::NotOurs {
            image: image.to_path_buf(),
            why,
        };
        let mut disk = std::fs::File::open(image).map_err(io(image))?;
        let image_len = disk.metadata().map_err(io(image))?.len();
        let mbr = mbrman::MBR::read_from(&mut disk, SECTOR as u32)
            .map_err(|e| not_ours(format!("no MBR partition table ({e})")))?;
        let first = &mbr[1];
        if !first.is_used() || first.sys != FAT32_LBA {
            return Err(not_ours(format!(
                "its first partition is of type {:#04x}; expected the FAT32 boot partition \
                 ({FAT32_LBA:#04x})",
                first.sys
            )));
        }
        let offset = u64::from(first.starting_lba) * SECTOR;
        let len = u64::from(first.sectors) * SECTOR;
        if offset + len > image_len {
            return Err(not_ours(format!(
                "its boot partition ends at byte {}, past the end of the image ({image_len} \
                 bytes); expected a whole image",
                offset + len
            )));
        }
        let mut boot_sector = [0u8; 512];
        disk.seek(SeekFrom::Start(offset))
            .and_then(|_| disk.read_exact(&mut boot_sector))
            .map_err(io(image))?;
        // The FAT32 extended BIOS parameter block: volume label at 0x47, type at 0x52.
        if &boot_sector[0x52..0x5a] != b"FAT32   " || &boot_sector[0x47..0x52] != VOLUME_LABEL {
            return Err(not_ours(format!(
                "its boot partition is not the FAT32 volume {:?} that letterbox build makes",
                String::from_utf8_lossy(VOLUME_LABEL).trim_end()
            )));
        }
        Ok(BootPartition {
            image: image.to_path_buf(),
            offset,
            len,
        })
    }

    /// The text of `letterbox.toml` on the partition.
    pub fn read_config(&self) -> Result<Vec<u8>, ImageError> {
        let work = self.work_dir()?;
        let to = work.path().join(PROVISIONING_FILE);
        let out = mtools("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(format!("{}@@{}", self.image.display(), self.offset))
            .arg(format!("::{PROVISIONING_FILE}"))
            .arg(&to)
            .output()
            .map_err(|source| ImageError::Spawn {
                what: "mcopy",
                source,
            })?;
        if !out.status.success() {
            return Err(ImageError::NotOurs {
                image: self.image.clone(),
                why: format!(
                    "no {PROVISIONING_FILE} on its boot partition ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        std::fs::read(&to).map_err(io(&to))
    }

    /// Replaces `letterbox.toml` on the partition with `text`. The partition is edited
    /// in a copy first and checked with `fsck.vfat -n`; the image is then replaced whole
    /// (temporary file, fsync, rename), so it is either as it was or fully edited.
    pub fn write_config(&self, text: &[u8]) -> Result<(), ImageError> {
        let work = self.work_dir()?;
        let partition = work.path().join("boot.fat");
        let mut disk = std::fs::File::open(&self.image).map_err(io(&self.image))?;
        disk.seek(SeekFrom::Start(self.offset))
            .map_err(io(&self.image))?;
        let mut copy = std::fs::File::create(&partition).map_err(io(&partition))?;
        std::io::copy(&mut (&mut disk).take(self.len), &mut copy).map_err(io(&partition))?;
        drop(copy);

        let source = work.path().join(PROVISIONING_FILE);
        std::fs::write(&source, text).map_err(io(&source))?;
        run(
            mtools("mcopy")
                .arg("-o")
                .arg("-i")
                .arg(&partition)
                .arg(&source)
                .arg(format!("::{PROVISIONING_FILE}")),
            "mcopy",
        )?;
        let fsck = Command::new("fsck.vfat")
            .arg("-n")
            .arg(&partition)
            .output()
            .map_err(|source| ImageError::Spawn {
                what: "fsck.vfat",
                source,
            })?;
        if !fsck.status.success() {
            return Err(ImageError::Fsck {
                image: self.image.clone(),
                report: String::from_utf8_lossy(&[fsck.stdout, fsck.stderr].concat()).into(),
            });
        }

        let mode = disk
            .metadata()
            .map_err(io(&self.image))?
            .permissions()
            .mode()
            & 0o7777;
        let mut edited = std::fs::File::open(&partition).map_err(io(&partition))?;
        disk.rewind().map_err(io(&self.image))?;
        crate::atomic_file::replace_with(&self.image, mode, |new| {
            std::io::copy(&mut disk, new)?;
            new.seek(SeekFrom::Start(self.offset))?;
            std::io::copy(&mut edited, new)?;
            new.flush()
        })
        .map_err(io(&self.image))
    }

    /// A scratch directory beside the image: the partition copy is as large as the
    /// partition, more than a RAM-backed /tmp may hold.
    fn work_dir(&self) -> Result<tempfile::TempDir, ImageError> {
        let dir = match self.image.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        tempfile::Builder::new()
            .prefix(".letterbox-")
            .tempdir_in(dir)
            .map_err(io(dir))
    }
}

/// An mtools command as `image::fs` runs them: no ~/.mtoolsrc, no drive geometry check,
/// time stamps in UTC (FAT stores local time).
fn mtools(tool: &str) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env("MTOOLSRC", "/dev/null")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC0");
    cmd
}

fn run(cmd: &mut Command, what: &'static str) -> Result<(), ImageError> {
    let out = cmd
        .output()
        .map_err(|source| ImageError::Spawn { what, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImageError::Tool {
            what,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

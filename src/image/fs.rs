//! Filesystem images made as plain files, without root, loop devices or mounts:
//! ext4 with `mke2fs`, FAT32 with mtools. Every identifier and timestamp is fixed so
//! the same inputs give the same bytes.

use std::path::Path;
use std::process::Command;

use super::{run, ImageError};

pub struct Ext4<'a> {
    pub label: &'a str,
    pub uuid: String,
    pub hash_seed: String,
    pub size_bytes: u64,
    pub source_date_epoch: u64,
}

impl Ext4<'_> {
    /// Makes `image`, an empty filesystem with a journal.
    pub fn make(&self, image: &Path) -> Result<(), ImageError> {
        let _ = std::fs::remove_file(image);
        let mut cmd = Command::new("mke2fs");
        cmd.args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
            .args(["-L", self.label, "-U", &self.uuid])
            .arg("-E")
            .arg(format!("hash_seed={},root_owner=0:0", self.hash_seed))
            // Timestamps inside the superblock and inodes mke2fs creates itself.
            .env("E2FSPROGS_FAKE_TIME", self.source_date_epoch.to_string());
        cmd.arg(image).arg(format!("{}k", self.size_bytes / 1024));
        run(&mut cmd, &format!("mke2fs {}", image.display()))
    }
}

/// A FAT32 image of `size_bytes` holding `files` in its root directory.
pub fn make_fat(
    image: &Path,
    size_bytes: u64,
    volume_id: u32,
    files: &[std::path::PathBuf],
    source_date_epoch: u64,
) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(image);
    let file = std::fs::File::create(image).map_err(|e| ImageError::io(image, e))?;
    file.set_len(size_bytes)
        .map_err(|e| ImageError::io(image, e))?;
    drop(file);
    run(
        mtools("mformat", image, source_date_epoch)
            .args(["-F", "-v", "LETTERBOX", "-N"])
            .arg(format!("{volume_id:08x}"))
            .arg("::"),
        "mformat (FAT32 boot partition)",
    )?;
    // -m keeps each file's (fixed) modification time instead of the time of the copy.
    run(
        mtools("mcopy", image, source_date_epoch)
            .arg("-m")
            .args(files)
            .arg("::/"),
        "mcopy (boot files)",
    )
}

fn mtools(tool: &str, image: &Path, source_date_epoch: u64) -> Command {
    let mut cmd = Command::new(tool);
    // mtools stamps what it creates (volume label, creation times) with this instead of now.
    cmd.env("SOURCE_DATE_EPOCH", source_date_epoch.to_string())
        .arg("-i")
        .arg(image)
        // FAT stores local time: UTC, so the bytes do not depend on the caller's TZ.
        .env("TZ", "UTC0")
        // No ~/.mtoolsrc surprises; the image file is not a real drive to check.
        .env("MTOOLSRC", "/dev/null")
        .env("MTOOLS_SKIP_CHECK", "1");
    cmd
}

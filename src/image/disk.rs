//! The disk image: the partition images laid out on 4 MiB boundaries behind an MBR, and
//! the sizes of the partitions this builder makes itself.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::ImageError;
use crate::early_boot::disk::ALIGN_SECTORS;

const SECTOR: u64 = 512;
/// The FAT32 boot partition.
pub(super) const BOOT_SIZE: u64 = 128 << 20;
/// The ext4 data partition as written; grown to fill the card on first boot.
pub(super) const DATA_SIZE: u64 = 32 << 20;

pub(super) fn file_len(path: &Path) -> Result<u64, ImageError> {
    Ok(std::fs::metadata(path)
        .map_err(|e| ImageError::io(path, e))?
        .len())
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Lays the partition images out on 4 MiB boundaries behind an MBR; returns the size.
pub(super) fn assemble_disk(
    out: &Path,
    signature: u32,
    parts: &[(u8, &PathBuf)],
) -> Result<u64, ImageError> {
    let align = ALIGN_SECTORS * SECTOR;
    let mut layout = Vec::new();
    let mut offset = align;
    for (kind, image) in parts {
        let len = round_up(file_len(image)?, align);
        layout.push((*kind, *image, offset, len));
        offset += len;
    }
    let total = offset;
    let mut disk = std::fs::File::create(out).map_err(|e| ImageError::io(out, e))?;
    disk.set_len(total).map_err(|e| ImageError::io(out, e))?;
    for (_, image, start, _) in &layout {
        let mut src = std::fs::File::open(image).map_err(|e| ImageError::io(image, e))?;
        disk.seek(SeekFrom::Start(*start))
            .map_err(|e| ImageError::io(out, e))?;
        std::io::copy(&mut src, &mut disk).map_err(|e| ImageError::io(out, e))?;
    }
    let mut mbr = mbrman::MBR::new_from(&mut disk, SECTOR as u32, signature.to_le_bytes())?;
    for (i, (kind, _, start, len)) in layout.iter().enumerate() {
        mbr[i + 1] = mbrman::MBRPartitionEntry {
            boot: if i == 0 {
                mbrman::BOOT_ACTIVE
            } else {
                mbrman::BOOT_INACTIVE
            },
            first_chs: mbrman::CHS::empty(),
            sys: *kind,
            last_chs: mbrman::CHS::empty(),
            starting_lba: (start / SECTOR) as u32,
            sectors: (len / SECTOR) as u32,
        };
    }
    mbr.write_into(&mut disk)?;
    disk.flush().map_err(|e| ImageError::io(out, e))?;
    Ok(total)
}

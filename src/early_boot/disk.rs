//! The SD card: finding it by its MBR disk signature, and growing the data partition (the
//! last one) and its ext4 filesystem to fill the card, online, without resize2fs or parted.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use log::info;

/// Partitions start and end on 4 MiB boundaries (SD cards' erase blocks), in 512-byte sectors.
pub const ALIGN_SECTORS: u64 = 8192;
const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the partition table of {path}")]
    WriteTable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Unexpected { path: PathBuf, what: String },
    #[error("kernel refused to resize partition {partition} of {disk}")]
    ResizePartition {
        disk: String,
        partition: u32,
        source: nix::Error,
    },
    #[error("kernel refused to grow the filesystem on {mountpoint}")]
    ResizeFs {
        mountpoint: String,
        source: nix::Error,
    },
}

/// An MBR partition named like the kernel's root=PARTUUID=: disk signature and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRef {
    pub signature: u32,
    pub partition: u32,
}

impl PartitionRef {
    /// Parses "0a1b2c3d-02".
    pub fn parse(text: &str) -> Option<Self> {
        let (sig, part) = text.split_once('-')?;
        Some(PartitionRef {
            signature: u32::from_str_radix(sig, 16).ok()?,
            partition: u32::from_str_radix(part, 16).ok()?,
        })
    }
}

impl fmt::Display for PartitionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{:02x}", self.signature, self.partition)
    }
}

/// The whole-disk block device ("mmcblk0") whose MBR carries `part`'s disk signature.
pub fn find_disk(part: &PartitionRef) -> Result<Option<String>, DiskError> {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return Ok(None);
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            !Path::new("/sys/class/block")
                .join(name)
                .join("partition")
                .exists()
        })
        .collect();
    names.sort();
    for name in names {
        let dev = Path::new("/dev").join(&name);
        let mut mbr = [0u8; 512];
        // Devices without media (an empty card slot, loop0) cannot be read: not ours.
        let Ok(mut file) = File::open(&dev) else {
            continue;
        };
        if file.read_exact(&mut mbr).is_err() || mbr[510..] != [0x55, 0xaa] {
            continue;
        }
        let signature = u32::from_le_bytes(mbr[440..444].try_into().expect("4 bytes"));
        if signature == part.signature
            && Path::new(&partition_device(&name, part.partition)).exists()
        {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// /dev/mmcblk0p2 for ("mmcblk0", 2), /dev/sda2 for ("sda", 2).
pub fn partition_device(disk: &str, n: u32) -> String {
    let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    format!("/dev/{disk}{sep}{n}")
}

fn sysfs_number(path: &Path) -> Result<u64, DiskError> {
    let text = std::fs::read_to_string(path).map_err(|source| DiskError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| DiskError::Unexpected {
        path: path.to_path_buf(),
        what: format!("expected a number, found {:?}", text.trim()),
    })
}

/// Grows partition `n` (the last on the disk) to the end of the card, rounded down to the
/// alignment: first in the MBR on the card, then in the kernel's view (BLKPG), so no
/// re-read of the table (which would fail while partitions are in use) is needed.
/// Returns the new size in sectors, or None when there was nothing to grow.
pub fn grow_last_partition(disk: &str, n: u32) -> Result<Option<u64>, DiskError> {
    let sys = Path::new("/sys/class/block").join(disk);
    let part_name = partition_device(disk, n)
        .trim_start_matches("/dev/")
        .to_string();
    let disk_sectors = sysfs_number(&sys.join("size"))?;
    let start = sysfs_number(&sys.join(&part_name).join("start"))?;
    let size = sysfs_number(&sys.join(&part_name).join("size"))?;
    let Some(new_size) = grown_size(disk_sectors, start, size) else {
        return Ok(None);
    };
    let dev = PathBuf::from("/dev").join(disk);
    write_mbr_size(&dev, n, start, new_size)?;
    blkpg_resize(disk, n, start, new_size)?;
    info!(
        "early boot: grew data partition {part_name} from {} MiB to {} MiB",
        (size * SECTOR) >> 20,
        (new_size * SECTOR) >> 20
    );
    Ok(Some(new_size))
}

/// The MBR addresses 2^32 sectors (2 TiB): a partition may not end beyond that.
const MBR_LIMIT_SECTORS: u64 = 1 << 32;

/// The size a partition at `start` grows to on a disk of `disk_sectors`: to the end of the
/// disk or the MBR's limit, whichever is first, rounded down to the alignment; None when
/// that is no larger than `size`.
fn grown_size(disk_sectors: u64, start: u64, size: u64) -> Option<u64> {
    let end = disk_sectors.min(MBR_LIMIT_SECTORS) / ALIGN_SECTORS * ALIGN_SECTORS;
    let new_size = end.saturating_sub(start);
    (new_size > size).then_some(new_size)
}

/// Why MBR entry `n` of `mbr` must not be grown to end at `start + new_size`, if it must not.
fn refuse_mbr_growth(mbr: &[u8; 512], n: u32, start: u64, new_size: u64) -> Option<String> {
    let entry = 446 + 16 * (n as usize - 1);
    let on_disk_start = u32::from_le_bytes(mbr[entry + 8..entry + 12].try_into().expect("4"));
    if mbr[510..] != [0x55, 0xaa] || u64::from(on_disk_start) != start {
        return Some(format!(
            "MBR entry {n} starts at sector {on_disk_start}, the kernel says {start}; not touching it"
        ));
    }
    if start + new_size > MBR_LIMIT_SECTORS {
        return Some(format!(
            "partition {n} would end beyond the MBR's 2 TiB limit"
        ));
    }
    // An entry after this one (added by hand) would be overlapped by the grown partition.
    (n as usize + 1..=4)
        .find(|later| mbr[446 + 16 * (later - 1) + 4] != 0)
        .map(|later| format!("MBR entry {later} is in use; not growing partition {n} over it"))
}

fn write_mbr_size(dev: &Path, n: u32, start: u64, new_size: u64) -> Result<(), DiskError> {
    let write_err = |source| DiskError::WriteTable {
        path: dev.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(write_err)?;
    let mut mbr = [0u8; 512];
    file.read_exact(&mut mbr).map_err(write_err)?;
    if let Some(what) = refuse_mbr_growth(&mbr, n, start, new_size) {
        return Err(DiskError::Unexpected {
            path: dev.to_path_buf(),
            what,
        });
    }
    let entry = 446 + 16 * (n as usize - 1);
    let size32 = u32::try_from(new_size).expect("capped at the MBR limit");
    mbr[entry + 12..entry + 16].copy_from_slice(&size32.to_le_bytes());
    file.seek(SeekFrom::Start(0)).map_err(write_err)?;
    file.write_all(&mbr).map_err(write_err)?;
    file.sync_all().map_err(write_err)
}

/// struct blkpg_partition from <linux/blkpg.h>.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// struct blkpg_ioctl_arg from <linux/blkpg.h>.
#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

const BLKPG_RESIZE_PARTITION: i32 = 3;
nix::ioctl_write_ptr_bad!(blkpg, 0x1269, BlkpgIoctlArg);
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

fn blkpg_resize(disk: &str, n: u32, start: u64, sectors: u64) -> Result<(), DiskError> {
    let dev = PathBuf::from("/dev").join(disk);
    let file = File::open(&dev).map_err(|source| DiskError::Read { path: dev, source })?;
    let mut part = BlkpgPartition {
        start: (start * SECTOR) as i64,
        length: (sectors * SECTOR) as i64,
        pno: n as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part,
    };
    // SAFETY: `arg` and the partition it points to are valid for the duration of the call.
    unsafe { blkpg(file.as_raw_fd(), &arg) }
        .map(drop)
        .map_err(|source| DiskError::ResizePartition {
            disk: disk.to_string(),
            partition: n,
            source,
        })
}

/// Grows the ext4 filesystem mounted on `mountpoint` to its partition's size when it is
/// smaller (first boot, or a boot interrupted between growing the partition and this).
pub fn grow_ext4(mountpoint: &str, device: &str) -> Result<(), DiskError> {
    let name = device.trim_start_matches("/dev/");
    let part_bytes = sysfs_number(&Path::new("/sys/class/block").join(name).join("size"))? * SECTOR;
    let (fs_blocks, block_size) = ext4_size(Path::new(device))?;
    let target = part_bytes / block_size;
    if target <= fs_blocks {
        return Ok(());
    }
    let dir = File::open(mountpoint).map_err(|source| DiskError::Read {
        path: mountpoint.into(),
        source,
    })?;
    // SAFETY: the ioctl reads one u64 from a valid pointer.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &target) }.map_err(|source| DiskError::ResizeFs {
        mountpoint: mountpoint.to_string(),
        source,
    })?;
    info!(
        "early boot: grew the data filesystem from {} MiB to {} MiB",
        (fs_blocks * block_size) >> 20,
        (target * block_size) >> 20
    );
    Ok(())
}

/// Block count and block size from an ext4 superblock.
fn ext4_size(device: &Path) -> Result<(u64, u64), DiskError> {
    let read_err = |source| DiskError::Read {
        path: device.to_path_buf(),
        source,
    };
    let mut file = File::open(device).map_err(read_err)?;
    let mut sb = [0u8; 1024];
    file.seek(SeekFrom::Start(1024)).map_err(read_err)?;
    file.read_exact(&mut sb).map_err(read_err)?;
    let le32 = |at: usize| u64::from(u32::from_le_bytes(sb[at..at + 4].try_into().expect("4")));
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return Err(DiskError::Unexpected {
            path: device.to_path_buf(),
            what: "no ext4 superblock".into(),
        });
    }
    let incompat_64bit = le32(0x60) & 0x80 != 0;
    let blocks = le32(0x04) | if incompat_64bit { le32(0x150) << 32 } else { 0 };
    Ok((blocks, 1024 << le32(0x18)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_stops_at_the_end_of_the_disk_or_the_mbr_limit() {
        let start = 3 * ALIGN_SECTORS;
        // 32 GB card: to the aligned end.
        let card = 62_333_952;
        assert_eq!(
            grown_size(card, start, ALIGN_SECTORS),
            Some(card / ALIGN_SECTORS * ALIGN_SECTORS - start)
        );
        // Already full size: nothing to do.
        assert_eq!(grown_size(card, start, card - start), None);
        // 4 TB card: the partition ends at 2 TiB, and its size fits the MBR's 32 bits.
        let grown = grown_size(7_814_037_168, start, ALIGN_SECTORS).unwrap();
        assert_eq!(start + grown, MBR_LIMIT_SECTORS);
        assert!(u32::try_from(grown).is_ok());
    }

    #[test]
    fn growth_is_refused_over_a_later_mbr_entry_or_a_moved_partition() {
        let start = 3 * ALIGN_SECTORS;
        let mut mbr = [0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let entry3 = 446 + 32;
        mbr[entry3 + 4] = 0x83;
        mbr[entry3 + 8..entry3 + 12].copy_from_slice(&(start as u32).to_le_bytes());
        assert_eq!(refuse_mbr_growth(&mbr, 3, start, 1 << 20), None);
        assert!(refuse_mbr_growth(&mbr, 3, start + 1, 1 << 20).is_some());
        assert!(refuse_mbr_growth(&mbr, 3, start, MBR_LIMIT_SECTORS).is_some());
        mbr[446 + 48 + 4] = 0x83;
        assert!(refuse_mbr_growth(&mbr, 3, start, 1 << 20)
            .unwrap()
            .contains("entry 4 is in use"));
    }

    #[test]
    fn partuuid_round_trips() {
        let p = PartitionRef::parse("0a1b2c3d-02").unwrap();
        assert_eq!(p.signature, 0x0a1b2c3d);
        assert_eq!(p.partition, 2);
        assert_eq!(p.to_string(), "0a1b2c3d-02");
        assert!(PartitionRef::parse("nonsense").is_none());
    }

    #[test]
    fn partition_devices_follow_kernel_naming() {
        assert_eq!(partition_device("mmcblk0", 3), "/dev/mmcblk0p3");
        assert_eq!(partition_device("sda", 1), "/dev/sda1");
    }
}

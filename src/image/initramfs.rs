//! The initramfs: the agent as /init, a /dev/console for the kernel to hand it, and the
//! modules needed to reach the SD card and mount its filesystems. Everything else (USB,
//! network) loads from the full module tree on the root filesystem after early boot.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use cpio::newc::{trailer, Builder};

use super::ImageError;
use crate::early_boot::modules::{module_name, ModuleIndex};

/// Module directories (under kernel/) that storage and its plumbing live in on the Pi:
/// SD host controllers and what they wait for (regulators, GPIO expander, clocks, DMA).
const STORAGE_DIRS: &[&str] = &[
    "drivers/mmc/",
    "drivers/regulator/",
    "drivers/gpio/",
    "drivers/clk/",
    "drivers/dma/",
    "drivers/pinctrl/",
    "drivers/firmware/",
    "drivers/soc/",
    "drivers/reset/",
    "fs/fat/",
    "fs/ext4/",
    "fs/squashfs/",
    "fs/jbd2/",
    "fs/mbcache",
    "fs/nls/nls_cp437",
    "fs/nls/nls_ascii",
    "fs/nls/nls_utf8",
    "crypto/crc32c",
    "lib/crc",
];

struct Archive<W: Write> {
    out: W,
    ino: u32,
    mtime: u32,
}

impl<W: Write> Archive<W> {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.ino += 1;
        let mut w = Builder::new(name)
            .ino(self.ino)
            .mode(mode)
            .nlink(if mode & 0o170000 == 0o040000 { 2 } else { 1 })
            .mtime(self.mtime)
            .write(&mut self.out, data.len() as u32);
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, 0o040755, &[])
    }

    /// Creates every parent directory of `path` not yet in the archive.
    fn parents(&mut self, path: &str, made: &mut BTreeSet<String>) -> std::io::Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if made.insert(prefix.clone()) {
                self.dir(&prefix)?;
            }
        }
        Ok(())
    }
}

/// Writes the initramfs to `out`. `modules_dir` is the root filesystem's
/// usr/lib/modules/VERSION (with depmod's index); returns how many modules went in.
pub fn write(
    out: &Path,
    agent: &[u8],
    modules_dir: &Path,
    release: &str,
    mtime: u32,
) -> Result<usize, ImageError> {
    let index = ModuleIndex::load(modules_dir)?;
    let dep_text = read(&modules_dir.join("modules.dep"))?;
    // The storage modules and everything they depend on.
    let mut wanted = BTreeSet::new();
    for line in dep_text.lines() {
        let Some((path, _)) = line.split_once(':') else {
            continue;
        };
        let rel = path.strip_prefix("kernel/").unwrap_or(path);
        if STORAGE_DIRS.iter().any(|d| rel.starts_with(d)) {
            wanted.extend(index.load_order(&module_name(path))?);
        }
    }
    let file = std::fs::File::create(out).map_err(|e| ImageError::io(out, e))?;
    let mut archive = Archive {
        out: std::io::BufWriter::new(file),
        ino: 0,
        mtime,
    };
    let io = |e| ImageError::io(out, e);
    for dir in [
        "dev",
        "proc",
        "sys",
        "sysroot",
        "usr",
        "usr/lib",
        "usr/lib/modules",
    ] {
        archive.dir(dir).map_err(io)?;
    }
    // The kernel opens /dev/console for PID 1's stdin/out/err before anything is mounted.
    archive.ino += 1;
    Builder::new("dev/console")
        .ino(archive.ino)
        .mode(0o020600)
        .nlink(1)
        .mtime(mtime)
        .rdev_major(5)
        .rdev_minor(1)
        .write(&mut archive.out, 0)
        .finish()
        .map_err(io)?;
    archive.entry("init", 0o100755, agent).map_err(io)?;

    let base = format!("usr/lib/modules/{release}");
    let mut made: BTreeSet<String> = ["usr", "usr/lib", "usr/lib/modules"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    archive.dir(&base).map_err(io)?;
    made.insert(base.clone());
    let mut dep_out = String::new();
    for line in dep_text.lines() {
        if let Some((path, _)) = line.split_once(':') {
            if wanted.contains(&module_name(path)) {
                dep_out.push_str(line);
                dep_out.push('\n');
                let name = format!("{base}/{path}");
                archive.parents(&name, &mut made).map_err(io)?;
                archive
                    .entry(&name, 0o100644, &read_bytes(&modules_dir.join(path))?)
                    .map_err(io)?;
            }
        }
    }
    let alias_out: String = read(&modules_dir.join("modules.alias"))?
        .lines()
        .filter(|l| {
            l.rsplit_once(' ')
                .is_some_and(|(_, module)| wanted.contains(module))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let softdep = read(&modules_dir.join("modules.softdep")).unwrap_or_default();
    for (name, text) in [
        ("modules.dep", dep_out),
        ("modules.alias", alias_out),
        ("modules.softdep", softdep),
    ] {
        archive
            .entry(&format!("{base}/{name}"), 0o100644, text.as_bytes())
            .map_err(io)?;
    }
    let mut w = trailer(archive.out).map_err(io)?;
    w.flush().map_err(io)?;
    Ok(wanted.len())
}

fn read(path: &Path) -> Result<String, ImageError> {
    std::fs::read_to_string(path).map_err(|e| ImageError::io(path, e))
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|e| ImageError::io(path, e))
}

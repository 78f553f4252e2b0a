//! The root filesystem: the locked packages unpacked (and kept between builds), the tree
//! laid out from them with the agent and overlays/, its modes and timestamps, and the
//! read-only squashfs made from it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::packages::{self, Cache, Lock};
use super::{run, ImageError};

/// The unpacked package trees, reused across builds while the lock is the same.
pub(super) struct Unpacked {
    /// The root filesystem's Debian userland (containerd, runc and their dependencies).
    pub userland: PathBuf,
    /// linux-image-*: kernel, modules (with depmod's index), device trees.
    pub kernel: PathBuf,
    /// raspi-firmware.
    pub firmware: PathBuf,
}

pub(super) fn unpack_all(cache: &Cache, lock: &Lock, dir: &Path) -> Result<Unpacked, ImageError> {
    let unpacked = Unpacked {
        userland: dir.join("userland"),
        kernel: dir.join("kernel"),
        firmware: dir.join("firmware"),
    };
    let stamp = dir.join("lock");
    let rendered = lock.render();
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(rendered.as_str()) {
        return Ok(unpacked);
    }
    recreate_dir(dir)?;
    for name in cache.dependency_closure(lock, packages::USERLAND_ROOTS, &[])? {
        let p = lock
            .get(&name)
            .ok_or_else(|| ImageError::MissingPackage(name.clone()))?;
        cache.unpack(p, &unpacked.userland)?;
    }
    let kernel = lock
        .packages
        .iter()
        .find(|p| p.name.starts_with("linux-image-") && p.name != "linux-image-arm64")
        .ok_or_else(|| ImageError::MissingPackage("linux-image-*-arm64".into()))?;
    cache.unpack(kernel, &unpacked.kernel)?;
    let firmware = lock
        .get("raspi-firmware")
        .ok_or_else(|| ImageError::MissingPackage("raspi-firmware".into()))?;
    cache.unpack(firmware, &unpacked.firmware)?;
    // The package's postinst would run depmod; maintainer scripts do not run here.
    let release = kernel_release(&unpacked.kernel)?;
    run(
        Command::new("depmod")
            .arg("-b")
            .arg(unpacked.kernel.join("usr"))
            .arg(&release),
        "depmod (kernel module index)",
    )?;
    std::fs::write(&stamp, rendered).map_err(|e| ImageError::io(&stamp, e))?;
    Ok(unpacked)
}

pub(super) fn kernel_release(kernel_tree: &Path) -> Result<String, ImageError> {
    let dir = kernel_tree.join("usr/lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| ImageError::io(&dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    releases.sort();
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(ImageError::Layout(format!(
            "expected one kernel in {}, found {releases:?}",
            dir.display()
        ))),
    }
}

/// Left out of the root filesystem: documentation (for the build host, not the appliance),
/// glibc's iconv modules (nothing here converts charsets), and containerd's deprecated v1
/// shims and its `ctr` debugging client (the appliance has no shell to run it from).
const PRUNE: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/lintian",
    "usr/share/locale",
    "usr/lib/aarch64-linux-gnu/gconv",
    "usr/bin/ctr",
    "usr/bin/containerd-shim",
    "usr/bin/containerd-shim-runc-v1",
];

/// Files of overlays/ laid over the Debian userland, embedded so the binary builds images
/// from anywhere.
const OVERLAYS: &[(&str, &str)] = &[
    ("etc/group", include_str!("../../overlays/etc/group")),
    (
        "etc/os-release",
        include_str!("../../overlays/etc/os-release"),
    ),
    ("etc/passwd", include_str!("../../overlays/etc/passwd")),
];

/// The root filesystem tree: Debian userland, kernel modules, the agent, the OCI layouts it
/// carries (each at its directory), overlays/, and what maintainer scripts would have made
/// (merged-/usr links, mount points).
pub(super) fn assemble_rootfs(
    unpacked: &Unpacked,
    rootfs: &Path,
    agent: &[u8],
    oci_layouts: &[(&Path, &str)],
) -> Result<(), ImageError> {
    recreate_dir(rootfs)?;
    let cp = |from: &Path, to: &Path| {
        run(
            Command::new("cp")
                .args(["-a", "--reflink=auto", "-T"])
                .arg(from)
                .arg(to),
            &format!("cp {}", from.display()),
        )
    };
    cp(&unpacked.userland, rootfs)?;
    for path in PRUNE {
        let path = rootfs.join(path);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    cp(
        &unpacked.kernel.join("usr/lib/modules"),
        &rootfs.join("usr/lib/modules"),
    )?;
    for (layout, dir) in oci_layouts {
        let dir = rootfs.join(dir.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
        cp(layout, &dir)?;
    }
    for (path, text) in OVERLAYS {
        let path = rootfs.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
        }
        std::fs::write(&path, text).map_err(|e| ImageError::io(&path, e))?;
        set_mode(&path, 0o644)?;
    }
    let bin = rootfs.join("usr/bin");
    std::fs::create_dir_all(&bin).map_err(|e| ImageError::io(&bin, e))?;
    let agent_path = bin.join("letterbox");
    std::fs::write(&agent_path, agent).map_err(|e| ImageError::io(&agent_path, e))?;
    set_mode(&agent_path, 0o755)?;
    for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
        let path = rootfs.join(link);
        if !path.exists() {
            std::os::unix::fs::symlink(target, &path).map_err(|e| ImageError::io(&path, e))?;
        }
    }
    for dir in [
        "boot", "data", "dev", "proc", "sys", "run", "tmp", "root", "etc", "var",
    ] {
        let path = rootfs.join(dir);
        std::fs::create_dir_all(&path).map_err(|e| ImageError::io(&path, e))?;
    }
    Ok(())
}

/// The read-only root filesystem image of the tree `rootfs`: root-owned, no xattrs, every
/// timestamp `epoch`.
pub(super) fn make_squashfs(rootfs: &Path, image: &Path, epoch: u64) -> Result<(), ImageError> {
    run(
        Command::new("mksquashfs")
            // mksquashfs 4.5 refuses SOURCE_DATE_EPOCH (which the caller may have set, as
            // the reproducible-builds convention asks) together with -mkfs-time/-all-time,
            // and on its own the variable only clamps later file times: the options, which
            // carry the same epoch, set them all.
            .env_remove("SOURCE_DATE_EPOCH")
            .arg(rootfs)
            .arg(image)
            .args([
                "-noappend",
                "-quiet",
                "-no-progress",
                "-all-root",
                "-no-xattrs",
            ])
            .args(["-comp", "zstd", "-processors", "2"])
            .arg("-mkfs-time")
            .arg(epoch.to_string())
            .arg("-all-time")
            .arg(epoch.to_string()),
        "mksquashfs (root filesystem)",
    )
}

fn recreate_dir(dir: &Path) -> Result<(), ImageError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ImageError::io(path, e))
}

pub(super) fn set_mtime(path: &Path, epoch: u64) -> Result<(), ImageError> {
    let time = std::time::UNIX_EPOCH + Duration::from_secs(epoch);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(time))
        .map_err(|e| ImageError::io(path, e))
}

/// Regular files with an execute bit that start with the ELF magic or "#!".
pub(super) fn count_executables(dir: &Path) -> Result<usize, ImageError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut count = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| ImageError::io(dir, e))? {
        let entry = entry.map_err(|e| ImageError::io(dir, e))?;
        let kind = entry.file_type().map_err(|e| ImageError::io(dir, e))?;
        let path = entry.path();
        if kind.is_dir() {
            count += count_executables(&path)?;
        } else if kind.is_file() {
            let meta = entry.metadata().map_err(|e| ImageError::io(&path, e))?;
            if meta.permissions().mode() & 0o111 == 0 {
                continue;
            }
            let mut magic = [0u8; 4];
            let n = std::fs::File::open(&path)
                .and_then(|mut f| f.read(&mut magic))
                .unwrap_or(0);
            let is_elf = n == 4 && magic == *b"\x7fELF";
            // Shared libraries carry the x bit too but are not programs.
            let is_library = path.to_string_lossy().contains(".so");
            if (is_elf && !is_library) || (n >= 2 && magic[..2] == *b"#!") {
                count += 1;
            }
        }
    }
    Ok(count)
}

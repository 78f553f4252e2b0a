//! `letterbox build`: letterbox.toml in, SD-card image out, without root privileges,
//! loop devices or mounts.
//!
//! Layout (MBR, 4 MiB aligned):
//! - p1 FAT32 (0x0c): Pi firmware, kernel, device trees, initramfs, config.txt,
//!   cmdline.txt, letterbox.toml.
//! - p2 (0x83): the root filesystem, squashfs (read-only by construction, reproducible
//!   with fixed timestamps and owners): the agent, kernel modules, containerd and runc,
//!   and the arm64 `letterbox-mail` OCI layout the agent imports into containerd.
//! - p3 (0x83): ext4 data, small in the image, grown to fill the card on first boot.
//!
//! This file runs the build (options, steps, progress, errors); `rootfs` makes the root
//! filesystem, `disk` the partition table around the partition images.

pub mod board;
mod disk;
mod fs;
mod initramfs;
pub mod mail;
pub mod oci;
pub mod packages;
mod postfix_files;
pub mod qemu;
mod rootfs;
pub mod webmail;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub use board::Board;

use crate::config;
use crate::content_hash::{fnv1a, fnv1a_continue};
use crate::early_boot::disk::PartitionRef;
use disk::{assemble_disk, file_len, BOOT_SIZE, DATA_SIZE};
use packages::Cache;
use rootfs::{assemble_rootfs, count_executables, kernel_release, set_mtime, unpack_all};

/// Timestamps inside the image when SOURCE_DATE_EPOCH is not set (2025-01-01).
const DEFAULT_EPOCH: u64 = 1_735_689_600;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Config(config::Diagnostics),
    #[error("cannot read the provisioning file")]
    ConfigRead(#[source] config::LoadError),
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {what}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} failed ({status}):\n{stderr}")]
    Tool {
        what: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("the agent binary {0} is missing: cross-build it first (make image does)")]
    NoAgent(PathBuf),
    #[error(
        "the {arch} {name} image {} is missing: build it first (make {name}-image MAIL_ARCH={arch})",
        .layout.display()
    )]
    NoContainerImage {
        name: &'static str,
        layout: PathBuf,
        arch: packages::Arch,
    },
    #[error("package {0} is not in the package set")]
    MissingPackage(String),
    #[error("{0}")]
    Layout(String),
    #[error("kernel modules")]
    Modules(#[from] crate::early_boot::modules::ModuleError),
    #[error("partition table")]
    Mbr(#[from] mbrman::Error),
    #[error("OCI image metadata")]
    Oci(#[from] oci_spec::OciSpecError),
}

impl ImageError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Runs a tool; its stderr becomes the error when it fails.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<(), ImageError> {
    output(cmd, what).map(drop)
}

/// Runs a tool and returns its stdout.
pub(crate) fn output(cmd: &mut Command, what: &str) -> Result<String, ImageError> {
    let out = cmd.output().map_err(|source| ImageError::Spawn {
        what: what.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            what: what.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct BuildOptions {
    /// letterbox.toml; the embedded default when None.
    pub config: Option<PathBuf>,
    pub board: Board,
    pub output: PathBuf,
    /// The cross-built static aarch64 agent.
    pub agent: PathBuf,
    /// The arm64 `letterbox-mail` OCI layout (`make mail-image MAIL_ARCH=arm64`), with its
    /// lock file beside it.
    pub mail_image: PathBuf,
    /// The arm64 `letterbox-webmail` OCI layout (`make webmail-image MAIL_ARCH=arm64`),
    /// carried only when the file enables the webmail: 45 MiB more on the root.
    pub webmail_image: PathBuf,
    /// Download cache and unpacked packages (the project's .cache/).
    pub cache_dir: PathBuf,
    pub source_date_epoch: u64,
    pub progress: bool,
}

impl BuildOptions {
    /// SOURCE_DATE_EPOCH from the environment, else a fixed date.
    pub fn epoch_from_env() -> u64 {
        std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_EPOCH)
    }
}

#[derive(Debug)]
pub struct Summary {
    pub image: PathBuf,
    pub lock_file: PathBuf,
    pub board: Board,
    pub image_bytes: u64,
    pub rootfs_bytes: u64,
    pub packages: usize,
    pub rootfs_packages: usize,
    pub executables: usize,
    pub initramfs_modules: usize,
    /// The mail image's manifest digest, as pinned in the lock file.
    pub mail_manifest: String,
    /// The webmail image's, when the image carries it.
    pub webmail_manifest: Option<String>,
    pub downloaded: bool,
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "image:      {}", self.image.display())?;
        writeln!(
            f,
            "size:       {} MiB (root filesystem {} MiB)",
            self.image_bytes >> 20,
            self.rootfs_bytes >> 20
        )?;
        writeln!(f, "board:      {}", self.board)?;
        writeln!(
            f,
            "packages:   {} Debian packages ({} in the root filesystem, {}), lock {}",
            self.packages,
            self.rootfs_packages,
            if self.downloaded {
                "downloaded"
            } else {
                "all from the cache"
            },
            self.lock_file.display()
        )?;
        writeln!(
            f,
            "contents:   {} executables in the root filesystem, {} modules in the initramfs",
            self.executables, self.initramfs_modules
        )?;
        writeln!(
            f,
            "mail image: {} {}",
            crate::paths::MAIL_IMAGE_DIR,
            self.mail_manifest
        )?;
        match &self.webmail_manifest {
            Some(manifest) => writeln!(
                f,
                "webmail:    {} {manifest}",
                crate::paths::WEBMAIL_IMAGE_DIR
            )?,
            None => writeln!(f, "webmail:    not carried ([webmail] enabled = false)")?,
        }
        write!(f, "time:       {:.1} s", self.elapsed.as_secs_f64())
    }
}

/// Stable identifiers derived from the inputs (FNV-1a), so two builds of the same
/// configuration carry the same UUIDs, volume id and disk signature.
struct Ids {
    seed: u64,
}

impl Ids {
    fn new(board: Board, config_text: &str) -> Ids {
        Ids {
            seed: fnv1a(format!("{board}\n{config_text}").as_bytes()),
        }
    }

    fn hash(&self, label: &str) -> u64 {
        fnv1a_continue(self.seed, label.as_bytes())
    }

    fn u32(&self, label: &str) -> u32 {
        (self.hash(label) >> 16) as u32
    }

    fn uuid(&self, label: &str) -> String {
        let a = self.hash(&format!("{label}/a"));
        let b = self.hash(&format!("{label}/b"));
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }
}

fn step(progress: bool, message: &str) -> ProgressBar {
    let bar = if progress {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn done(bar: ProgressBar, message: &str) {
    bar.finish_and_clear();
    if !bar.is_hidden() {
        eprintln!("  {message} ({:.1} s)", bar.elapsed().as_secs_f64());
    }
}

pub fn build(opts: &BuildOptions) -> Result<Summary, ImageError> {
    let started = Instant::now();
    // Refuse a broken file before any work, with its diagnostics.
    let (config, config_text) = match config::load(opts.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(config::LoadError::Invalid(d)) => return Err(ImageError::Config(d)),
        Err(e) => return Err(ImageError::ConfigRead(e)),
    };
    let mail_lock = mail::built_lock(&mail::MAIL, &opts.mail_image, packages::Arch::Arm64)?;
    // The OCI layouts the root carries, each pinned by its lock: the webmail only when
    // the file enables it (a user who enables it later rebuilds the image).
    let mut carried = vec![(
        opts.mail_image.as_path(),
        crate::paths::MAIL_IMAGE_DIR,
        mail_lock,
    )];
    if config.webmail.enabled {
        let lock = mail::built_lock(
            &webmail::WEBMAIL,
            &opts.webmail_image,
            packages::Arch::Arm64,
        )?;
        carried.push((
            opts.webmail_image.as_path(),
            crate::paths::WEBMAIL_IMAGE_DIR,
            lock,
        ));
    }
    let agent = std::fs::read(&opts.agent).map_err(|_| ImageError::NoAgent(opts.agent.clone()))?;
    let ids = Ids::new(opts.board, &config_text);
    let epoch = opts.source_date_epoch;
    // Modes in the image are the packages' and this code's, never the caller's umask
    // (inherited by cp, dpkg-deb and mke2fs too).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // Per build, so builds running side by side (tests) do not share scratch space; removed
    // on every return, failed builds included.
    let build_dir = opts.cache_dir.join("build");
    std::fs::create_dir_all(&build_dir).map_err(|e| ImageError::io(&build_dir, e))?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{}-", opts.board))
        .tempdir_in(&build_dir)
        .map_err(|e| ImageError::io(&build_dir, e))?;
    let work = scratch.path();

    // 1. Packages: from the lock and cache when complete, else resolved and downloaded.
    let cache = Cache {
        dir: opts.cache_dir.join("debs"),
        set: packages::PackageSet::sd_image(),
    };
    let bar = step(opts.progress, "Debian packages: resolving and downloading");
    let (lock, downloaded) = match cache.warm_lock() {
        Some(lock) => (lock, false),
        None => (cache.fetch(work)?, true),
    };
    done(
        bar,
        &format!(
            "{} Debian packages {}",
            lock.packages.len(),
            if downloaded {
                "downloaded"
            } else {
                "from the cache"
            }
        ),
    );

    let bar = step(opts.progress, "unpacking packages, indexing kernel modules");
    let unpacked = unpack_all(&cache, &lock, &opts.cache_dir.join("unpacked"))?;
    done(bar, "packages unpacked");

    // 2. Root filesystem.
    let bar = step(opts.progress, "root filesystem (squashfs)");
    let rootfs = work.join("rootfs");
    let userland = cache.dependency_closure(&lock, packages::USERLAND_ROOTS, &[])?;
    let layouts: Vec<(&Path, &str)> = carried.iter().map(|(l, dir, _)| (*l, *dir)).collect();
    assemble_rootfs(&unpacked, &rootfs, &agent, &layouts)?;
    let executables = count_executables(&rootfs)?;
    let rootfs_img = work.join("rootfs.squashfs");
    rootfs::make_squashfs(&rootfs, &rootfs_img, epoch)?;
    let rootfs_bytes = file_len(&rootfs_img)?;
    done(bar, &format!("root filesystem: {} MiB", rootfs_bytes >> 20));

    // 3. Boot partition.
    let bar = step(
        opts.progress,
        "boot partition (FAT32) and data partition (ext4)",
    );
    let signature = ids.u32("disk signature");
    let root_ref = PartitionRef {
        signature,
        partition: 2,
    };
    let release = kernel_release(&unpacked.kernel)?;
    let boot_dir = work.join("boot");
    std::fs::create_dir_all(&boot_dir).map_err(|e| ImageError::io(&boot_dir, e))?;
    let initramfs_modules = initramfs::write(
        &boot_dir.join("initrd.img"),
        &agent,
        &rootfs.join("usr/lib/modules").join(&release),
        &release,
        epoch as u32,
    )?;
    let copy = |from: &Path, name: &str| -> Result<PathBuf, ImageError> {
        let to = boot_dir.join(name);
        std::fs::copy(from, &to).map_err(|e| ImageError::io(from, e))?;
        Ok(to)
    };
    copy(
        &unpacked.kernel.join(format!("boot/vmlinuz-{release}")),
        "vmlinuz",
    )?;
    for fw in opts.board.firmware_files() {
        copy(
            &unpacked.firmware.join("usr/lib/raspi-firmware").join(fw),
            fw,
        )?;
    }
    let dtb_dir = unpacked
        .kernel
        .join(format!("usr/lib/linux-image-{release}/broadcom"));
    for dtb in opts.board.device_trees() {
        copy(&dtb_dir.join(dtb), dtb)?;
    }
    let write = |name: &str, text: &str| {
        let path = boot_dir.join(name);
        std::fs::write(&path, text).map_err(|e| ImageError::io(&path, e))
    };
    write("config.txt", opts.board.config_txt())?;
    write("cmdline.txt", &board::cmdline_txt(&root_ref.to_string()))?;
    write(crate::paths::PROVISIONING_FILE, &config_text)?;
    let mut boot_files: Vec<PathBuf> = std::fs::read_dir(&boot_dir)
        .map_err(|e| ImageError::io(&boot_dir, e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    boot_files.sort();
    for f in &boot_files {
        set_mtime(f, epoch)?;
    }
    let boot_img = work.join("boot.vfat");
    fs::make_fat(
        &boot_img,
        BOOT_SIZE,
        ids.u32("boot volume id"),
        &boot_files,
        epoch,
    )?;

    let data_img = work.join("data.ext4");
    fs::Ext4 {
        label: "letterbox-data",
        uuid: ids.uuid("data uuid"),
        hash_seed: ids.uuid("data hash seed"),
        size_bytes: DATA_SIZE,
        source_date_epoch: epoch,
    }
    .make(&data_img)?;
    done(bar, "boot and data partitions");

    // 4. The disk.
    let bar = step(opts.progress, "disk image");
    if let Some(parent) = opts.output.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ImageError::io(parent, e))?;
    }
    // Written beside OUT and renamed over it: a failed build leaves the previous image.
    let partial = PathBuf::from(format!("{}.partial", opts.output.display()));
    let image_bytes = assemble_disk(
        &partial,
        signature,
        &[(0x0c, &boot_img), (0x83, &rootfs_img), (0x83, &data_img)],
    )
    .inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    std::fs::rename(&partial, &opts.output).map_err(|e| ImageError::io(&opts.output, e))?;
    let lock_file = PathBuf::from(format!("{}.lock", opts.output.display()));
    // The image's packages, then each OCI image it carries, pinned by its manifest digest.
    let mut lock_text = lock.render();
    for (_, dir, image_lock) in &carried {
        lock_text.push_str(&format!("# {dir}:\n{image_lock}"));
    }
    std::fs::write(&lock_file, lock_text).map_err(|e| ImageError::io(&lock_file, e))?;
    done(bar, "disk image");

    Ok(Summary {
        image: opts.output.clone(),
        lock_file,
        board: opts.board,
        image_bytes,
        rootfs_bytes,
        packages: lock.packages.len(),
        rootfs_packages: userland.len(),
        executables,
        initramfs_modules,
        mail_manifest: mail::built_manifest(&carried[0].2)
            .unwrap_or_default()
            .to_string(),
        webmail_manifest: carried
            .get(1)
            .and_then(|(_, _, lock)| mail::built_manifest(lock))
            .map(str::to_string),
        downloaded,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_fixed_by_board_and_configuration() {
        // Pinned: a change here changes the PARTUUIDs and UUIDs of every image built.
        let ids = Ids::new(Board::Rpi3, "version = 1\n");
        assert_eq!(ids.u32("disk signature"), 0x7f8b_9c08);
        assert_eq!(
            ids.uuid("data uuid"),
            "943ea038-d767-4dfc-8943-a338d767d315"
        );
        assert_ne!(
            Ids::new(Board::Rpi4, "version = 1\n").u32("disk signature"),
            ids.u32("disk signature")
        );
    }
}

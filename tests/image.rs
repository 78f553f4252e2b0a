//! The SD-card image: partition table, filesystems that pass fsck, the boot files the
//! Pi firmware reads, reproducibility, both boards, and refusal of a broken file.
//!
//! Needs the cross-built agent and the package cache: `make test` builds both first
//! (`make test-image`), and these tests skip with that hint when they are missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURE: &str = "tests/fixtures/qemu-letterbox.toml";
const TEST_IMAGE: &str = "out/test-rpi3.img";
const AGENT: &str = "target-aarch64/aarch64-unknown-linux-gnu/release/letterbox";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The image `make test-image` built, or None (after recording the skip).
fn test_image(test: &str) -> Option<PathBuf> {
    let image = root().join(TEST_IMAGE);
    if image.is_file() {
        Some(image)
    } else {
        common::skip(
            test,
            "no out/test-rpi3.img: run `make test-image` (make test does)",
        );
        None
    }
}

/// Runs `build`, or skips when there is no cross-built agent to put in the image.
fn build(test: &str, config: &Path, board: &str, out: &Path) -> Option<std::process::Output> {
    run_build(test, build_command(config, board, out))
}

fn run_build(test: &str, mut cmd: Command) -> Option<std::process::Output> {
    if !root().join(AGENT).is_file() {
        common::skip(
            test,
            "no cross-built agent: run `make cross` (make test does)",
        );
        return None;
    }
    Some(cmd.output().expect("run letterbox build"))
}

fn build_command(config: &Path, board: &str, out: &Path) -> Command {
    let mut cmd = Command::new(common::letterbox_bin());
    cmd.current_dir(root())
        .arg("build")
        .arg(config)
        .args(["--board", board, "-o"])
        .arg(out);
    cmd
}

/// `build` run by a shell with another umask and time zone than `make test-image` had.
fn build_under_umask_077_and_another_tz(
    test: &str,
    config: &Path,
    out: &Path,
) -> Option<std::process::Output> {
    let mut cmd = Command::new("sh");
    cmd.current_dir(root())
        .env("TZ", "EST5EDT")
        .arg("-c")
        .arg("umask 077 && exec \"$@\"")
        .arg("sh")
        .arg(common::letterbox_bin())
        .arg("build")
        .arg(config)
        .args(["--board", "rpi3", "-o"])
        .arg(out);
    run_build(test, cmd)
}

/// Byte range of partition `n` (1-based) read back with mbrman.
fn partition(image: &Path, n: usize) -> (u64, u64) {
    let mut f = std::fs::File::open(image).unwrap();
    let mbr = mbrman::MBR::read_from(&mut f, 512).unwrap();
    let p = &mbr[n];
    (u64::from(p.starting_lba) * 512, u64::from(p.sectors) * 512)
}

/// Copies partition `n` out of the image into its own file, for fsck.
fn extract_partition(image: &Path, n: usize, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let (start, len) = partition(image, n);
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut out = std::fs::File::create(to).unwrap();
    std::io::copy(&mut f.take(len), &mut out).unwrap();
}

/// A file from the FAT partition, read back with mtools.
fn mtype(image: &Path, name: &str) -> String {
    let (start, _) = partition(image, 1);
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{start}", image.display()))
        .arg(format!("::{name}"))
        .output()
        .expect("run mtype");
    assert!(
        out.status.success(),
        "mtype ::{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mdir(image: &Path) -> String {
    let (start, _) = partition(image, 1);
    let out = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(format!("{}@@{start}", image.display()))
        .arg("::")
        .output()
        .expect("run mdir");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn partition_table_has_boot_root_and_data_aligned() {
    let Some(image) = test_image("partition_table_has_boot_root_and_data_aligned") else {
        return;
    };
    let mut f = std::fs::File::open(&image).unwrap();
    let mbr = mbrman::MBR::read_from(&mut f, 512).unwrap();
    let used: Vec<_> = mbr.iter().filter(|(_, p)| p.is_used()).collect();
    assert_eq!(used.len(), 3, "three partitions");
    let kinds: Vec<u8> = used.iter().map(|(_, p)| p.sys).collect();
    assert_eq!(kinds, [0x0c, 0x83, 0x83], "FAT32 LBA, Linux, Linux");
    assert!(mbr[1].is_active(), "the boot partition is marked active");
    let mut end = 0;
    for (_, p) in &used {
        assert_eq!(p.starting_lba % 8192, 0, "4 MiB aligned start");
        assert_eq!(p.sectors % 8192, 0, "4 MiB aligned size");
        assert!(u64::from(p.starting_lba) >= end, "no overlap");
        end = u64::from(p.starting_lba) + u64::from(p.sectors);
    }
    assert_eq!(
        end * 512,
        std::fs::metadata(&image).unwrap().len(),
        "the data partition ends the image"
    );
}

#[test]
fn filesystems_pass_fsck() {
    let Some(image) = test_image("filesystems_pass_fsck") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot.vfat");
    let root_fs = dir.path().join("root.squashfs");
    let data = dir.path().join("data.ext4");
    extract_partition(&image, 1, &boot);
    extract_partition(&image, 2, &root_fs);
    extract_partition(&image, 3, &data);
    for (tool, args, file) in [
        ("fsck.vfat", &["-n"][..], &boot),
        ("e2fsck", &["-fn"][..], &data),
    ] {
        let out = Command::new(tool).args(args).arg(file).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The read-only root: squashfs lists, and holds the agent and the container runtime.
    let out = Command::new("unsquashfs")
        .args(["-lls", "-d", ""])
        .arg(&root_fs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unsquashfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    for path in [
        "/usr/bin/letterbox",
        "/usr/bin/containerd",
        "/usr/sbin/runc",
        "/usr/lib/aarch64-linux-gnu/libseccomp.so.2",
        "/etc/passwd",
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.ends_with(path) || l.contains(&format!("{path} ->"))),
            "{path} missing from the root filesystem"
        );
    }
    assert!(
        listing.contains("/usr/lib/modules/") && listing.contains("modules.alias"),
        "kernel modules with their index"
    );
}

/// A file of the image's root filesystem, read with `unsquashfs -cat`.
fn squashfs_file(root_fs: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("unsquashfs")
        .args(["-cat"])
        .arg(root_fs)
        .arg(path)
        .output()
        .expect("run unsquashfs");
    assert!(
        out.status.success(),
        "unsquashfs -cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn the_root_carries_containerd_runc_and_the_arm64_mail_image_pinned_in_the_lock() {
    let Some(image) =
        test_image("the_root_carries_containerd_runc_and_the_arm64_mail_image_pinned_in_the_lock")
    else {
        return;
    };
    use sha2::{Digest, Sha256};
    let lock = std::fs::read_to_string(format!("{}.lock", image.display())).unwrap();
    for package in ["containerd", "runc"] {
        assert!(
            lock.lines().any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() == 5 && f[0] == package && f[2] == "arm64" && f[3].len() == 64
            }),
            "{package} (arm64, with its sha256) is not pinned in the lock:\n{lock}"
        );
    }
    let (_, mail_lock) = lock
        .split_once("# /usr/share/letterbox/letterbox-mail:\n")
        .expect("the lock has the mail image's section");
    assert!(
        mail_lock.starts_with("# letterbox-mail arm64: letterbox-mail:latest\n"),
        "the mail image's section: {mail_lock}"
    );
    let manifest = mail_lock
        .lines()
        .find_map(|l| l.strip_prefix("manifest sha256:"))
        .expect("the mail image's manifest digest");
    assert!(
        mail_lock.contains(" arm64 ") && mail_lock.contains("\npostfix "),
        "the mail image's packages are pinned too"
    );

    // The layout in the root: its index names the pinned manifest, whose blob hashes to it,
    // and whose config says arm64.
    let dir = tempfile::tempdir().unwrap();
    let root_fs = dir.path().join("root.squashfs");
    extract_partition(&image, 2, &root_fs);
    let layout = "/usr/share/letterbox/letterbox-mail";
    let index =
        String::from_utf8(squashfs_file(&root_fs, &format!("{layout}/index.json"))).unwrap();
    assert!(
        index.contains(&format!("\"sha256:{manifest}\"")),
        "index.json does not name the pinned manifest {manifest}: {index}"
    );
    let blob = |digest: &str| squashfs_file(&root_fs, &format!("{layout}/blobs/sha256/{digest}"));
    let manifest_blob = blob(manifest);
    assert_eq!(
        data_encoding::HEXLOWER.encode(&Sha256::digest(&manifest_blob)),
        manifest,
        "the manifest blob's digest"
    );
    let manifest_json: serde_json::Value = serde_json::from_slice(&manifest_blob).unwrap();
    let config_digest = manifest_json["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&blob(config_digest.strip_prefix("sha256:").unwrap())).unwrap();
    assert_eq!(config["architecture"], "arm64", "the mail image's config");
    for layer in manifest_json["layers"].as_array().unwrap() {
        let digest = layer["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        assert_eq!(
            data_encoding::HEXLOWER.encode(&Sha256::digest(blob(digest))),
            digest,
            "layer blob"
        );
    }
}

#[test]
fn boot_files_enable_the_serial_console() {
    let Some(image) = test_image("boot_files_enable_the_serial_console") else {
        return;
    };
    let config = mtype(&image, "config.txt");
    for line in [
        "arm_64bit=1",
        "enable_uart=1",
        "kernel=vmlinuz",
        "initramfs initrd.img followkernel",
    ] {
        assert!(
            config.lines().any(|l| l.trim() == line),
            "config.txt lacks {line}:\n{config}"
        );
    }
    let cmdline = mtype(&image, "cmdline.txt");
    assert!(cmdline.contains("console=serial0,115200"), "{cmdline}");
    assert!(cmdline.contains("root=PARTUUID="), "{cmdline}");
    assert_eq!(cmdline.lines().count(), 1, "cmdline.txt is one line");
    let toml = mtype(&image, "letterbox.toml");
    assert_eq!(toml, std::fs::read_to_string(root().join(FIXTURE)).unwrap());
    let listing = mdir(&image);
    for file in [
        "bootcode.bin",
        "start.elf",
        "fixup.dat",
        "vmlinuz",
        "initrd.img",
        "bcm2837-rpi-3-b.dtb",
    ] {
        assert!(
            listing.to_lowercase().contains(&file.to_lowercase()),
            "{file} missing from the boot partition:\n{listing}"
        );
    }
}

#[test]
fn same_inputs_give_identical_images_and_rpi4_gets_its_firmware() {
    let test = "same_inputs_give_identical_images_and_rpi4_gets_its_firmware";
    let Some(image) = test_image(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("again.img");
    let Some(out) = build_under_umask_077_and_another_tz(test, Path::new(FIXTURE), &again) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&image).unwrap() == std::fs::read(&again).unwrap(),
        "two builds from the same inputs differ (the second under umask 077 and TZ=EST5EDT)"
    );
    let mut disk = std::fs::File::open(&again).unwrap();
    let signature = mbrman::MBR::read_from(&mut disk, 512)
        .unwrap()
        .header
        .disk_signature;
    let cmdline = mtype(&again, "cmdline.txt");
    let expected = format!("root=PARTUUID={:08x}-02", u32::from_le_bytes(signature));
    assert!(
        cmdline.split_whitespace().any(|arg| arg == expected),
        "cmdline.txt names the root partition by the MBR's signature ({expected}): {cmdline}"
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("all from the cache"),
        "a warm build downloads nothing:\n{summary}"
    );

    let pi4 = dir.path().join("rpi4.img");
    let Some(out) = build(test, Path::new(FIXTURE), "rpi4", &pi4) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = mdir(&pi4).to_lowercase();
    for file in ["start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb"] {
        assert!(
            listing.contains(file),
            "{file} missing for rpi4:\n{listing}"
        );
    }
    assert!(
        !listing.contains("bootcode.bin"),
        "the Pi 4 boots from EEPROM"
    );
    assert!(mtype(&pi4, "config.txt").contains("enable_uart=1"));
}

#[test]
fn broken_provisioning_file_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("letterbox.toml");
    std::fs::write(&broken, "version = 1\n[system]\nhostname = 42\n").unwrap();
    let out_img = dir.path().join("never.img");
    // The file is refused before the agent is read, so no cross-built agent is needed.
    let out = build_command(&broken, "rpi3", &out_img)
        .output()
        .expect("run letterbox build");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("letterbox.toml:3:"),
        "line and column: {stderr}"
    );
    assert!(!out_img.exists(), "no image from a broken file");
}

#[test]
fn an_image_without_the_arm64_mail_image_is_refused_with_the_command_that_builds_it() {
    assert_refused_without_its_arm64_image(Path::new(FIXTURE), "mail");
}

#[test]
fn an_image_whose_file_enables_the_webmail_without_its_arm64_image_is_refused_with_the_command_that_builds_it(
) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("letterbox.toml");
    let fixture = std::fs::read_to_string(root().join(FIXTURE)).unwrap();
    let enabled = fixture.replace("[webmail]\nenabled = false", "[webmail]\nenabled = true");
    assert_ne!(enabled, fixture, "the fixture turns the webmail off");
    std::fs::write(&config, enabled).unwrap();
    assert_refused_without_its_arm64_image(&config, "webmail");
}

/// `build` from `config` refuses a missing `letterbox-NAME-arm64` layout, naming it and the
/// make command that builds it, and the host's amd64 layout in its place for its
/// architecture; it writes no image. Checked before the agent is read, so no cross-built
/// agent is needed.
fn assert_refused_without_its_arm64_image(config: &Path, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out_img = dir.path().join("never.img");
    let flag = format!("--{name}-image");
    let missing = dir.path().join(format!("letterbox-{name}-arm64"));
    let out = build_command(config, "rpi3", &out_img)
        .arg(&flag)
        .arg(&missing)
        .output()
        .expect("run letterbox build");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&missing.display().to_string())
            && stderr.contains(&format!("make {name}-image MAIL_ARCH=arm64")),
        "names the missing layout and how to build it: {stderr}"
    );
    // The host's amd64 layout in its place: refused for its architecture.
    let amd64 = root().join(format!("out/letterbox-{name}-amd64"));
    if amd64.join("index.json").is_file() {
        let out = build_command(config, "rpi3", &out_img)
            .arg(&flag)
            .arg(&amd64)
            .output()
            .expect("run letterbox build");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("is not the lock of the arm64 {name} image")),
            "an amd64 layout: {stderr}"
        );
    }
    assert!(!out_img.exists(), "no image without the {name} image");
}

/// SOURCE_DATE_EPOCH for the test below: 2023-11-14 22:13:20 UTC, not the builder's
/// default epoch, so a timestamp that ignores the variable shows.
const EPOCH: u64 = 1_700_000_000;
const EPOCH_MINUTE_UTC: &str = "2023-11-14 22:13";

#[test]
fn source_date_epoch_sets_every_timestamp_and_two_builds_are_identical() {
    let test = "source_date_epoch_sets_every_timestamp_and_two_builds_are_identical";
    let dir = tempfile::tempdir().unwrap();
    let images = [dir.path().join("one.img"), dir.path().join("two.img")];
    for image in &images {
        // As a user would: `SOURCE_DATE_EPOCH=1700000000 make image`.
        let mut cmd = build_command(Path::new(FIXTURE), "rpi3", image);
        cmd.env("SOURCE_DATE_EPOCH", EPOCH.to_string());
        let Some(out) = run_build(test, cmd) else {
            return;
        };
        assert!(
            out.status.success(),
            "build with SOURCE_DATE_EPOCH={EPOCH}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let image = &images[0];
    assert!(
        std::fs::read(image).unwrap() == std::fs::read(&images[1]).unwrap(),
        "two builds with SOURCE_DATE_EPOCH={EPOCH} differ"
    );

    // FAT: every boot file, copied out with its modification time (-m).
    let boot = dir.path().join("boot");
    std::fs::create_dir(&boot).unwrap();
    let (start, _) = partition(image, 1);
    let out = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        // FAT stores local time; the builder writes it as UTC.
        .env("TZ", "UTC0")
        .args(["-m", "-n", "-i"])
        .arg(format!("{}@@{start}", image.display()))
        .arg("::*")
        .arg(&boot)
        .output()
        .expect("run mcopy");
    assert!(
        out.status.success(),
        "mcopy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut boot_files = 0;
    for entry in std::fs::read_dir(&boot).unwrap() {
        let entry = entry.unwrap();
        let mtime = entry.metadata().unwrap().modified().unwrap();
        assert_eq!(
            mtime
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            EPOCH,
            "FAT time of {:?}",
            entry.file_name()
        );
        boot_files += 1;
    }
    assert!(boot_files >= 5, "only {boot_files} boot files copied out");

    // ext4: the superblock's creation and write times, and the inodes mke2fs made.
    let data = dir.path().join("data.ext4");
    extract_partition(image, 3, &data);
    let superblock = {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&data).unwrap();
        f.seek(SeekFrom::Start(1024)).unwrap();
        let mut sb = vec![0u8; 1024];
        f.read_exact(&mut sb).unwrap();
        sb
    };
    let le32 = |at: usize| {
        u64::from(u32::from_le_bytes(
            superblock[at..at + 4].try_into().unwrap(),
        ))
    };
    assert_eq!(le32(0x108), EPOCH, "ext4 s_mkfs_time");
    assert_eq!(le32(0x30), EPOCH, "ext4 s_wtime");
    for inode in ["/", "/lost+found"] {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("stat {inode}"))
            .arg(&data)
            .output()
            .expect("run debugfs");
        let stat = String::from_utf8_lossy(&out.stdout);
        let times: Vec<u64> = stat
            .lines()
            .filter_map(|l| l.trim().split_once("time: 0x"))
            .map(|(_, rest)| u64::from_str_radix(&rest[..8], 16).unwrap())
            .collect();
        assert!(times.len() >= 4, "debugfs stat {inode}:\n{stat}");
        assert!(
            times.iter().all(|&t| t == EPOCH),
            "ext4 times of {inode}: {times:?}\n{stat}"
        );
    }

    // squashfs: the creation time, and every inode's time (listed to the minute).
    let root_fs = dir.path().join("root.squashfs");
    extract_partition(image, 2, &root_fs);
    let out = Command::new("unsquashfs")
        .arg("-mkfs-time")
        .arg(&root_fs)
        .output()
        .expect("run unsquashfs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        EPOCH.to_string(),
        "squashfs creation time"
    );
    let out = Command::new("unsquashfs")
        .args(["-lls", "-UTC", "-d", ""])
        .arg(&root_fs)
        .output()
        .expect("run unsquashfs");
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    let entries: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains(" root/root "))
        .collect();
    assert!(entries.len() > 100, "squashfs listing:\n{listing}");
    for entry in entries {
        assert!(
            entry.contains(EPOCH_MINUTE_UTC),
            "squashfs time is not {EPOCH_MINUTE_UTC}: {entry}"
        );
    }
}

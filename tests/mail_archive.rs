//! A deleted account's home archived as `<name>-<date>.tar.zst`: read back by GNU tar and
//! the zstd program (not by the code that wrote it), with every file, owner, mode and mtime;
//! a second archive the same day beside the first; and a write that fails (a read-only or
//! a full file system) leaving no file. Needs root: to give files to a box uid, and to
//! mount the file systems that fail.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use letterbox::mail::archive::{archive_home, remove_home, ArchiveError};
use letterbox::mail::maildir::{ensure_maildir, FIRST_UID};

const UID: u32 = FIRST_UID + 7;

fn date() -> time::Date {
    time::Date::from_calendar_date(2026, time::Month::November, 3).unwrap()
}

fn can_run(test: &str, tools: &[&str]) -> bool {
    if !common::is_root() {
        common::skip(test, "needs root to give files to a box uid and to mount");
        return false;
    }
    tools.iter().all(|tool| common::installed(test, tool))
}

/// Bytes that do not compress, so that an archive is as large as its messages.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write_owned(path: &Path, contents: &[u8], mode: u32, mtime: u64) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::lchown(path, Some(UID), Some(UID)).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
}

/// alice's home as her box leaves it: messages in new and cur (one of them larger than a
/// zstd frame of the archive), Dovecot's index files, a folder, a symbolic link.
fn alice_home(root: &Path) -> PathBuf {
    let home = ensure_maildir(root, "alice", UID).unwrap();
    let maildir = home.maildir();
    write_owned(
        &maildir.join("new/1764000000.M1P11.box-alice,S=64,W=66"),
        b"From: bob@example.net\r\nSubject: new\r\n\r\nunread\r\n",
        0o600,
        1_764_000_000,
    );
    write_owned(
        &maildir.join("cur/1763000000.M2P12.box-alice,S=3145728:2,S"),
        &noise(3 << 20, 7),
        0o600,
        1_763_000_000,
    );
    write_owned(
        &maildir.join("dovecot.index.log"),
        &noise(5000, 9),
        0o640,
        1_764_000_100,
    );
    write_owned(
        &maildir.join("dovecot-uidlist"),
        b"3 V1 N2\n1 :1763000000.M2P12.box-alice\n",
        0o600,
        1_764_000_100,
    );
    let sent = maildir.join(".Sent");
    for dir in ["", "cur", "new", "tmp"] {
        std::fs::create_dir(sent.join(dir)).unwrap();
        std::fs::set_permissions(sent.join(dir), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::lchown(sent.join(dir), Some(UID), Some(UID)).unwrap();
    }
    write_owned(
        &sent.join("cur/1762000000.M3P13.box-alice,S=20:2,S"),
        b"Subject: sent\r\n\r\nhi\r\n",
        0o600,
        1_762_000_000,
    );
    std::os::unix::fs::symlink("Maildir/dovecot-uidlist", home.path.join("uidlist")).unwrap();
    std::os::unix::fs::lchown(home.path.join("uidlist"), Some(UID), Some(UID)).unwrap();
    home.path
}

/// What tar must keep of an entry.
#[derive(Debug, PartialEq, Eq)]
struct Kept {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    contents: Vec<u8>,
}

/// Every entry under `dir` (itself included, as ""), by its path relative to `dir`.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Kept> {
    fn walk(root: &Path, path: &Path, out: &mut BTreeMap<PathBuf, Kept>) {
        let meta = std::fs::symlink_metadata(path).unwrap();
        let (kind, contents) = if meta.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                walk(root, &entry.unwrap().path(), out);
            }
            ("dir", Vec::new())
        } else if meta.is_symlink() {
            let target = std::fs::read_link(path).unwrap();
            ("symlink", target.into_os_string().into_encoded_bytes())
        } else {
            ("file", std::fs::read(path).unwrap())
        };
        let kept = Kept {
            kind,
            // A symbolic link's own mode is not kept by anything, nor used.
            mode: if meta.is_symlink() {
                0
            } else {
                meta.mode() & 0o7777
            },
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            contents,
        };
        out.insert(path.strip_prefix(root).unwrap().to_path_buf(), kept);
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn gnu_tar_gives_back_the_home_with_its_owners_modes_and_mtimes() {
    let test = "gnu_tar_gives_back_the_home_with_its_owners_modes_and_mtimes";
    if !can_run(test, &["tar", "zstd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = alice_home(&dir.path().join("homes"));
    let before = tree(&home);
    let backups = dir.path().join("backups");

    let archive = archive_home(&home, &backups, "alice", date()).unwrap();
    assert_eq!(archive, backups.join("alice-2026-11-03.tar.zst"));
    let meta = std::fs::metadata(&archive).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(std::fs::metadata(&backups).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(names_in(&backups), ["alice-2026-11-03.tar.zst"]);
    assert!(
        meta.len() > 3 << 20,
        "the 3 MiB message is in it: {} bytes",
        meta.len()
    );

    // The zstd program's own check: every frame whole, its checksum right; one frame for
    // each MiB of tar, which it reads as one stream.
    common::run_ok(Command::new("zstd").arg("-tq").arg(&archive));
    let frames = common::run_ok(Command::new("zstd").arg("-lv").arg(&archive));
    assert!(
        frames.contains("# Zstandard Frames: 4\n") && frames.contains("Check: XXH64"),
        "{frames}"
    );
    let listing = common::run_ok(Command::new("tar").args(["--zstd", "-tf"]).arg(&archive));
    assert!(
        listing
            .lines()
            .all(|l| l == "alice" || l.starts_with("alice/")),
        "every entry under alice/:\n{listing}"
    );
    let out = dir.path().join("restored");
    std::fs::create_dir(&out).unwrap();
    common::run_ok(
        Command::new("tar")
            .args(["--zstd", "--numeric-owner", "--same-owner", "-xpf"])
            .arg(&archive)
            .arg("-C")
            .arg(&out),
    );
    let after = tree(&out.join("alice"));
    assert_eq!(after.len(), 15, "{:#?}", after.keys());
    assert_eq!(after, before);

    remove_home(&home).unwrap();
    assert!(!home.exists());
    assert!(home.parent().unwrap().is_dir(), "only the home is removed");
}

#[test]
fn a_second_archive_the_same_day_is_written_beside_the_first() {
    let test = "a_second_archive_the_same_day_is_written_beside_the_first";
    if !can_run(test, &["zstd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = alice_home(&dir.path().join("homes"));
    let backups = dir.path().join("backups");
    let first = archive_home(&home, &backups, "alice", date()).unwrap();
    let first_bytes = std::fs::read(&first).unwrap();
    std::fs::write(home.join("Maildir/new/later"), b"Subject: later\r\n\r\n").unwrap();

    let second = archive_home(&home, &backups, "alice", date()).unwrap();
    let third = archive_home(&home, &backups, "alice", date()).unwrap();
    assert_eq!(second, backups.join("alice-2026-11-03-2.tar.zst"));
    assert_eq!(third, backups.join("alice-2026-11-03-3.tar.zst"));
    assert_eq!(
        std::fs::read(&first).unwrap(),
        first_bytes,
        "never overwritten"
    );
    let listing = common::run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | tar -tf -", second.display())),
    );
    assert!(listing.contains("alice/Maildir/new/later\n"), "{listing}");
    assert_eq!(
        names_in(&backups),
        [
            "alice-2026-11-03-2.tar.zst",
            "alice-2026-11-03-3.tar.zst",
            "alice-2026-11-03.tar.zst"
        ]
    );
}

/// Runs `body` in a mount namespace of its own, on a thread, so that what it mounts is
/// gone when it returns.
fn in_mount_namespace<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("make / private");
            body()
        })
        .join()
        .unwrap()
    })
}

fn mount_tmpfs(on: &Path, flags: nix::mount::MsFlags, options: &str) {
    nix::mount::mount(Some("tmpfs"), on, Some("tmpfs"), flags, Some(options)).expect("tmpfs");
}

#[test]
fn a_read_only_backups_dir_gives_an_error_naming_the_archive_and_no_file() {
    let test = "a_read_only_backups_dir_gives_an_error_naming_the_archive_and_no_file";
    if !can_run(test, &[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = alice_home(&dir.path().join("homes"));
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let (error, left) = in_mount_namespace(|| {
        mount_tmpfs(&backups, nix::mount::MsFlags::MS_RDONLY, "mode=0700");
        let error = archive_home(&home, &backups, "alice", date()).unwrap_err();
        (error, names_in(&backups))
    });
    let shown = error.to_string();
    let path = backups.join("alice-2026-11-03.tar.zst");
    assert!(
        matches!(&error, ArchiveError::Io { path: p, source, .. }
            if *p == path && source.kind() == std::io::ErrorKind::ReadOnlyFilesystem),
        "{error:?}"
    );
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(left.is_empty(), "{left:?}");
    assert!(home.join("Maildir/cur").is_dir(), "the home is left alone");
}

#[test]
fn a_full_file_system_midway_gives_an_error_and_leaves_no_partial_file() {
    let test = "a_full_file_system_midway_gives_an_error_and_leaves_no_partial_file";
    if !can_run(test, &[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = alice_home(&dir.path().join("homes"));
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let (error, left, before) = in_mount_namespace(|| {
        // Room for a little more than one frame of the 3 MiB message, not all of it.
        mount_tmpfs(
            &backups,
            nix::mount::MsFlags::empty(),
            "size=1500k,mode=0700",
        );
        std::fs::write(backups.join("bob-2026-11-01.tar.zst"), b"kept").unwrap();
        let before = names_in(&backups);
        let error = archive_home(&home, &backups, "alice", date()).unwrap_err();
        (error, names_in(&backups), before)
    });
    let path = backups.join("alice-2026-11-03.tar.zst");
    assert!(
        matches!(&error, ArchiveError::Io { action: "writing", path: p, source }
            if *p == path && source.raw_os_error() == Some(nix::libc::ENOSPC)),
        "{error:?}"
    );
    assert_eq!(error.to_string(), format!("writing {}", path.display()));
    assert!(!path.exists());
    assert_eq!(left, before, "nothing added, the other archive kept");
}

#[test]
fn a_name_that_is_not_one_path_component_or_a_home_that_is_not_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    for name in ["../alice", "a/b", "", ".", ".."] {
        let error = archive_home(dir.path(), &backups, name, date()).unwrap_err();
        assert!(
            matches!(&error, ArchiveError::InvalidName { name: n } if n == name),
            "{name:?}: {error:?}"
        );
    }
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let error = archive_home(&file, &backups, "alice", date()).unwrap_err();
    assert!(
        matches!(&error, ArchiveError::NotAHome { path } if *path == file),
        "{error:?}"
    );
    assert!(!backups.exists(), "nothing made for a refused archive");
}
